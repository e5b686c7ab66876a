"""A pass may start from a watched body only when nothing this process has heard of is newer.

A stateful model plays one resource on an API server (versions are integers here, so the test can
compare them; the code under test never does): changes by others, a watch that delivers events in
order, late, or skips some when it lists again, GETs and status writes whose answers come back after
other things happened, writes refused as stale and writes applied without an answer. After every step,
a trusted body must be at least as new as every version the process has received, and as its own
writes (even one whose answer was lost). Planted bugs show
that the model notices when the rules are broken.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cvm_prelaunch_operator.kube.bodies import WatchedBodies

KEY = ("ns", "res")


def event(bodies: WatchedBodies[int], number: int | None) -> None:
    """A watch event; the body kept is the version's number, which the test may compare."""
    bodies.observed(KEY, str(number or ""), number)


def answer(bodies: WatchedBodies[int], number: int, marker: int) -> None:
    bodies.answered(KEY, str(number), number, marker)


class Bodies(RuleBasedStateMachine):
    make = WatchedBodies

    def __init__(self) -> None:
        super().__init__()
        self.bodies: WatchedBodies[int] = self.make()
        self.server = 1
        self.pending: deque[int] = deque([1])  # events the watch has not delivered yet
        self.heard = 0  # the newest version this process has received in any way
        self.request: tuple[str, int, int | None] | None = None  # (kind, marker, answer or None)

    def _heard(self, version: int) -> None:
        self.heard = max(self.heard, version)

    @rule()
    def someone_else_changes_it(self) -> None:
        self.server += 1
        self.pending.append(self.server)

    @precondition(lambda self: bool(self.pending))
    @rule()
    def the_watch_delivers(self) -> None:
        version = self.pending.popleft()
        event(self.bodies, version)
        self._heard(version)

    @precondition(lambda self: len(self.pending) > 1)
    @rule()
    def the_watch_lists_again(self) -> None:
        """A new listing reports the current object only: the events between are never seen."""
        self.pending = deque([self.pending[-1]])

    @precondition(lambda self: self.request is None)
    @rule()
    def a_get_is_sent(self) -> None:
        self.request = ("get", self.bodies.marker(KEY), self.server)

    @precondition(lambda self: self.request is None)
    @rule(stale=st.booleans(), answer_lost=st.booleans())
    def a_status_write_is_sent(self, stale: bool, answer_lost: bool) -> None:
        marker = self.bodies.marker(KEY)
        trusted = self.bodies.trusted(KEY)
        base = trusted if trusted is not None else self.server
        if stale or base != self.server:
            self.request = ("refused", marker, None)
            return
        self.server += 1
        self.pending.append(self.server)
        self.request = ("lost" if answer_lost else "write", marker, self.server)

    @precondition(lambda self: self.request is not None)
    @rule()
    def the_answer_comes_back(self) -> None:
        assert self.request is not None
        kind, marker, version = self.request
        self.request = None
        if kind in ("get", "write"):
            assert version is not None
            answer(self.bodies, version, marker)
            self._heard(version)
        else:
            self.bodies.doubt(KEY)
            if version is not None:
                self._heard(version)  # applied though unheard: never start from before our own write

    @rule()
    def another_process_may_have_led(self) -> None:
        self.bodies.doubt_all()

    @invariant()
    def a_trusted_body_is_the_newest_heard_of(self) -> None:
        trusted = self.bodies.trusted(KEY)
        if trusted is not None:
            assert trusted >= self.heard


SETTINGS = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_a_trusted_body_is_never_older_than_what_was_heard() -> None:
    run_state_machine_as_test(Bodies, settings=SETTINGS)


def test_after_a_write_and_its_echo_passes_start_from_the_watch() -> None:
    """The point of it all: no GET after our own write, nor after a change by others that follows."""
    bodies: WatchedBodies[int] = WatchedBodies()
    event(bodies, 1)
    assert bodies.trusted(KEY) is None, "the first pass of a process reads with a GET"
    answer(bodies, 1, bodies.marker(KEY))
    assert bodies.trusted(KEY) == 1
    marker = bodies.marker(KEY)
    answer(bodies, 2, marker)
    assert bodies.trusted(KEY) == 2, "the write's answer, before its echo"
    event(bodies, 2)
    event(bodies, 3)
    assert bodies.trusted(KEY) == 3
    event(bodies, None)
    assert bodies.trusted(KEY) is None and len(bodies) == 0


class AnswersIgnoreEventsMeanwhile(WatchedBodies[int]):
    def answered(self, key: Any, version: str, body: Any, marker: int) -> None:
        super().answered(key, version, body, self.marker(key))


class EventsWhileAwaitingAreTrusted(WatchedBodies[int]):
    def observed(self, key: Any, version: str, body: Any) -> None:
        known = self._known.get(key)
        if body is not None and known is not None and known.awaiting is not None:
            known.events += 1
            known.awaiting, known.watched, known.body = None, version, body
            return
        super().observed(key, version, body)


class FailedWritesKeepTrust(WatchedBodies[int]):
    def doubt(self, key: Any) -> None:
        return None


@pytest.mark.parametrize(
    "planted", [AnswersIgnoreEventsMeanwhile, EventsWhileAwaitingAreTrusted, FailedWritesKeepTrust]
)
def test_the_model_catches_planted_bugs(planted: type[WatchedBodies[int]]) -> None:
    class Planted(Bodies):
        make = planted

    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            Planted, settings=settings(SETTINGS, max_examples=2000, phases=[Phase.generate])
        )
