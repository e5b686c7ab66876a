"""The last known body of each watched resource, and whether a pass may start from it instead of a GET.

A pass must start from the newest state the API server had (never from a watch event older than our
own last write). resourceVersions are opaque, so "newest" is judged by order alone: a watch delivers
one object's events in the order they happened, and the answer to a GET or to a status write is the
newest state at the time it was made. A body is *trusted* when nothing this process has heard of is
newer than it:

- A body becomes trusted only from an answer of ours (a GET or a status write). The watch's own
  events never make one trusted: the first pass of a process over a resource reads it with a GET.
- After an answer at version V, watch events that come before V's own event are older: they are not
  kept. V's event arrives next (the echo) and the watch is caught up again.
- Once caught up, every new event is newer than anything known: it replaces the body and trust stays.
- Any doubt ends trust until the next answer: an event that arrived while the request was under way
  and is not the answer's own version, an event other than V's while V's is awaited (older, or newer
  if a watch that listed again skipped V's), or a write that failed (it may have been applied without
  our hearing back).

A body that is trusted yet stale can only come from a watch that lags (the usual informer delay): the
status write that follows carries the resourceVersion as a precondition, so a pass that planned from
it is refused (409) and plans again from a GET.

One entry per resource the watch reports, dropped when the watch reports it deleted: the same bound
as the metrics' summaries. The adapter keeps what a pass needs of a body (not its managedFields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

ObjectKey = tuple[str, str]  # (namespace, name)
T = TypeVar("T")


@dataclass
class _Known(Generic[T]):
    body: T  # the newest body known: the last event's, or a newer answer's
    watched: str  # the resourceVersion of the watch's last event
    trusted: bool = False
    awaiting: str | None = None  # an answer's version whose watch event has not come yet
    events: int = 0  # watch events so far: tells whether one came while a request was under way


class WatchedBodies(Generic[T]):
    """Pure bookkeeping (no I/O) over opaque resourceVersions: the cluster adapter feeds it watch
    events and answers."""

    def __init__(self) -> None:
        self._known: dict[ObjectKey, _Known[T]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def observed(self, key: ObjectKey, version: str, body: T | None) -> None:
        """A watch event (``body`` None: deleted)."""
        if body is None:
            self._known.pop(key, None)
            return
        known = self._known.get(key)
        if known is None:
            self._known[key] = _Known(body, version, events=1)
            return
        known.events += 1
        known.watched = version
        if known.awaiting is None:
            known.body = body
        elif version == known.awaiting:
            known.body, known.awaiting = body, None  # the answer's echo: the watch has caught up
        else:
            # Older than the answer, or the answer's own event was skipped by a new listing (and this
            # is newer): no way to tell, so the next pass reads.
            known.body, known.trusted, known.awaiting = body, False, None

    def marker(self, key: ObjectKey) -> int:
        """Taken before a request whose answer will be ``answered``."""
        known = self._known.get(key)
        return known.events if known is not None else -1

    def answered(self, key: ObjectKey, version: str, body: T | None, marker: int) -> None:
        """The answer to a GET or a status write sent after ``marker(key)`` was taken (``body`` None:
        the answer did not carry the object)."""
        known = self._known.get(key)
        if known is None:
            return  # not (or no longer) watched: nothing would tell us of a later change
        if body is None or not version:
            known.trusted, known.awaiting = False, None
        elif known.events != marker:
            # Events came meanwhile: the answer is the newest only if the last of them is its own.
            known.trusted, known.awaiting = known.watched == version, None
            if known.trusted:
                known.body = body
        else:
            known.body, known.trusted = body, True
            known.awaiting = None if known.watched == version else version

    def doubt(self, key: ObjectKey) -> None:
        """A write failed (it may have been applied unheard) or was refused as stale."""
        known = self._known.get(key)
        if known is not None:
            known.trusted, known.awaiting = False, None

    def doubt_all(self) -> None:
        for known in self._known.values():
            known.trusted, known.awaiting = False, None

    def trusted(self, key: ObjectKey) -> T | None:
        """The body a pass may start from without a GET (None: read it)."""
        known = self._known.get(key)
        return known.body if known is not None and known.trusted else None
