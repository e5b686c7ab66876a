"""Phala Cloud adapter: the HTTP client the reconciler drives through ``reconcile.ports.PhalaCloud``."""

from cvm_prelaunch_operator.phala.client import PhalaCloudClient, PhalaCloudSession
from cvm_prelaunch_operator.phala.errors import MalformedResponse
from cvm_prelaunch_operator.phala.responses import CurrentOperation, OperationsPage
from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings

__all__ = [
    "CurrentOperation",
    "MalformedResponse",
    "OperationsPage",
    "PhalaCloudClient",
    "PhalaCloudSession",
    "PhalaCloudSettings",
]
