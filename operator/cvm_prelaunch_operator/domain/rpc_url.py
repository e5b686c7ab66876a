"""An RPC URL is user input: checked before any connection is made.

A tenant chooses the RPC (``spec.onChain``), and the operator sends it signed transactions paid from
the app owner's wallet and believes its answers about them. Plain ``http`` would let anyone on the path
lie about receipts and fees, so it is refused unless the host is a loopback address (a node beside the
operator) or the operator's administrator allowed it (``ALLOW_INSECURE_RPC=true``).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from cvm_prelaunch_operator.domain.secrets import redact_url


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def rpc_url_problem(url: str, *, allow_insecure: bool) -> str | None:
    """Why the operator will not use this URL (a message safe to show), or None when it may."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return "the RPC URL is not a valid URL"
    shown = redact_url(url)
    if parts.scheme not in ("https", "http") or not host:
        return f"the RPC URL {shown} must be an absolute https URL"
    if parts.scheme == "http" and not is_loopback(host) and not allow_insecure:
        return (
            f"the RPC URL {shown} uses plain http to a non-loopback host: transactions and the answers "
            "about them would travel unprotected. Use https, or set the operator setting "
            "ALLOW_INSECURE_RPC=true to accept it"
        )
    return None
