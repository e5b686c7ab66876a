"""Secret values and redaction: a secret can be carried everywhere but printed nowhere."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_MASK = "***"


class Secret:
    """A string that must never reach a log, an event, a status or an exception text.

    ``str``/``repr``/``format`` all print a mask; the value is read only through ``reveal()``,
    which makes every place that handles the plain value easy to find.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the value somewhere we do not control.
        raise TypeError("Secret values cannot be pickled")


def redact_url(url: str) -> str:
    """Keep what identifies an endpoint (scheme, host, port) and hide what may carry a key.

    RPC providers put keys in the path (``/v2/<key>``), the query (``?apikey=``) or the user info.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return _MASK
    if not parts.scheme or not host:
        return _MASK
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    hidden = bool(parts.path.strip("/") or parts.query or parts.fragment or parts.username)
    return f"{parts.scheme}://{netloc}{'/' + _MASK if hidden else ''}"


class Redactor:
    """Scrubs known secret values (and their URL parts) out of free text, such as the message of an
    exception raised by a third-party library that quoted a URL or a header."""

    def __init__(self, secrets: Iterable[Secret | str | None] = ()) -> None:
        self._needles: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: Secret | str | None) -> None:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if not value:
            return
        needles = {value}
        if "://" in value:
            # A library may print the URL's path or query alone.
            parts = urlsplit(value)
            needles.update(p for p in (parts.path, parts.query, parts.netloc) if len(p.strip("/")) >= 6)
            needles.update(seg for seg in parts.path.split("/") if len(seg) >= 12)
        stripped = value.removeprefix("0x")
        if len(stripped) >= 16:
            needles.add(stripped)
        self._needles.extend(n for n in needles if n not in self._needles)
        # Longest first, so a whole URL is masked before its parts.
        self._needles.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, _MASK)
        return text


_HEX_KEY = re.compile(r"\b(0x)?[0-9a-fA-F]{64}\b")


def looks_like_private_key(text: str) -> bool:
    """True when text holds a 32-byte hex value; used by tests that scan output for leaks."""
    return bool(_HEX_KEY.search(text))
