"""What a log line is about: the resource, the step and the correlation id of the pass under way.

The reconcile engine sets these for the duration of a pass (``bound``); a log formatter reads them
(``current``). Context variables follow the asyncio task, so concurrent passes never mix them up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_namespace: ContextVar[str | None] = ContextVar("cpls_namespace", default=None)
_name: ContextVar[str | None] = ContextVar("cpls_name", default=None)
_step: ContextVar[str | None] = ContextVar("cpls_step", default=None)
_correlation_id: ContextVar[str | None] = ContextVar("cpls_correlation_id", default=None)


@contextlib.contextmanager
def bound(namespace: str, name: str) -> Iterator[None]:
    """Log lines emitted inside are about this resource."""
    tokens = (_namespace.set(namespace), _name.set(name), _step.set(None), _correlation_id.set(None))
    try:
        yield
    finally:
        _correlation_id.reset(tokens[3])
        _step.reset(tokens[2])
        _name.reset(tokens[1])
        _namespace.reset(tokens[0])


def set_step(step: str | None, correlation_id: str | None = None) -> None:
    """The step the pass is in now (and the operation it follows, if any)."""
    _step.set(step)
    if correlation_id is not None:
        _correlation_id.set(correlation_id)


def current() -> dict[str, str]:
    """The fields set now, for a log record (absent ones are left out)."""
    fields = {
        "namespace": _namespace.get(),
        "name": _name.get(),
        "step": _step.get(),
        "correlation_id": _correlation_id.get(),
    }
    return {key: value for key, value in fields.items() if value is not None}
