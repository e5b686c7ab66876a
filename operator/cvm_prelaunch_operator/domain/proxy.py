"""Which HTTP proxy a request to a URL goes through, read from the environment.

Both outbound adapters (Phala Cloud, chain RPC) read it once per base URL instead of letting
aiohttp look it up per request (``trust_env``), which also reads ``~/.netrc`` in a worker thread
on each request and would hand its credentials to any host a tenant names.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

from cvm_prelaunch_operator.domain.secrets import redact_url


@dataclass(frozen=True)
class Proxy:
    """Where requests to a URL go through; ``url`` carries no credentials, ``headers`` the
    ``Proxy-Authorization`` made of them: sent with the ``CONNECT`` of an https URL, with each
    request (which goes to the proxy whole) of a plain-http one."""

    url: str
    headers: Mapping[str, str] | None = None
    secrets: tuple[str, ...] = ()  # the password and the header's token: redacted wherever quoted

    def __repr__(self) -> str:
        return f"Proxy({redact_url(self.url)!r})"


def proxy_from_environment(url: str, *, purpose: str) -> Proxy | None:
    """The proxy for ``url`` from ``{scheme}_proxy`` (else ``all_proxy``) and ``no_proxy``, upper
    or lower case, as curl and httpx choose it. A proxy URL without a scheme is an http proxy.
    ``purpose`` names what the proxy is for in the error of an invalid one; the error quotes the
    proxy URL without its credentials."""
    target = urlsplit(url)
    proxies = getproxies()
    value = proxies.get(target.scheme) or proxies.get("all")
    if not value or proxy_bypass(target.hostname or ""):
        return None
    if "://" not in value:
        value = f"http://{value}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"the proxy for {purpose}, {redact_url(value)}, is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the proxy for {purpose}, {redact_url(value)}, is not an http or https proxy URL")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port is not None else host
    proxy_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if parts.username is None:
        return Proxy(proxy_url)
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{unquote(parts.username)}:{password}".encode()).decode("ascii")
    secrets = tuple(secret for secret in (password, parts.password, token) if secret)
    return Proxy(proxy_url, {"Proxy-Authorization": f"Basic {token}"}, secrets)
