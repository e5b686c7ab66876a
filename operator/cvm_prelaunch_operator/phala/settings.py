"""Settings of the Phala Cloud client: the operator's own, never a field of a custom resource.

The API keys of every resource go to one endpoint only, the one the operator's administrator
configured; a resource cannot point the operator (and its keys) at another host.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from cvm_prelaunch_operator.domain.config import from_env, setting

DEFAULT_BASE_URL = "https://cloud-api.phala.com/api/v1"

MAX_TIMEOUT = 15.0
"""No request may hold a reconcile worker longer than this (issue: one round of remote calls per pass)."""

DEFAULT_API_VERSION = "2026-06-23"
"""The pinned ``X-Phala-Version``: the newest of the known values (2025-10-28, 2026-01-21,
2026-05-22, 2026-06-23). It is the shape the published OpenAPI document describes: ``GET /cvms/{id}``
with ``in_progress``, ``progress.correlation_id`` and ``pre_launch_script_hash``, which the
operator reads and older versions lack. The parsers still accept the older shapes (numeric ids,
missing fields), so a server answering in an older shape degrades gracefully instead of failing."""


@dataclass(frozen=True)
class PhalaCloudSettings:
    """Where the Phala Cloud API is and how the operator talks to it.

    ``base_url`` must be ``https``; plain ``http`` is accepted only for a loopback host (a local
    simulator), since the API key travels in a header.
    """

    base_url: str = setting(
        "PHALA_CLOUD_API_URL", DEFAULT_BASE_URL, "Phala Cloud API; the API keys are only ever sent here"
    )
    api_version: str = setting(
        "PHALA_CLOUD_API_VERSION", DEFAULT_API_VERSION, "`X-Phala-Version` sent on every request"
    )
    connect_timeout: float = setting("PHALA_CLOUD_CONNECT_TIMEOUT", 5.0, "seconds to connect to Phala Cloud")
    read_timeout: float = setting(
        "PHALA_CLOUD_READ_TIMEOUT",
        15.0,
        "seconds to wait for an answer of Phala Cloud (at most 15)",
    )
    max_concurrency: int = setting(
        "PHALA_CLOUD_MAX_CONCURRENCY", 16, "remote calls in flight at once, across all resources", minimum=1
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _validate_base_url(self.base_url))
        if not self.api_version.strip():
            raise ValueError("the Phala Cloud API version must not be empty")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not 0 < value <= MAX_TIMEOUT:
                raise ValueError(
                    f"{name} must be a positive number of seconds, at most {MAX_TIMEOUT:g}, not {value!r}"
                )
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {self.max_concurrency!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PhalaCloudSettings:
        """Read ``PHALA_CLOUD_API_URL``, ``PHALA_CLOUD_API_VERSION``, ``PHALA_CLOUD_MAX_CONCURRENCY``,
        ``PHALA_CLOUD_CONNECT_TIMEOUT`` and ``PHALA_CLOUD_READ_TIMEOUT``; unset or empty means default."""
        return from_env(cls, os.environ if environ is None else environ)


def _validate_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValueError(f"the Phala Cloud API URL {url!r} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"the Phala Cloud API URL {url!r} must be an absolute https URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("the Phala Cloud API URL must not carry credentials, a query or a fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(
            f"the Phala Cloud API URL {url!r} uses plain http for a non-loopback host: the API key "
            "would travel unencrypted; use https"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
