"""Keeps the pre-launch script of Phala Cloud CVMs in sync with Kubernetes."""

__version__ = "0.1.0"
