"""Bounded text and times as status, conditions and events carry them."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

MESSAGE_LIMIT: Final = 1024  # condition and Event messages
NODE_TEXT_LIMIT: Final = 256  # what a chain RPC or Phala Cloud said, before it is quoted in a message
TRUNCATED: Final = " [truncated]"


def cut(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` within ``limit`` characters: its start, then `` [truncated]`` when something was cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def format_time(timestamp: float, *, round_up: bool = False) -> str:
    """RFC 3339 in UTC with milliseconds. Times that gate work are rounded up, so that reading one back
    never gives a moment earlier than the one meant."""
    millis = math.ceil(timestamp * 1000.0) if round_up else math.floor(timestamp * 1000.0)
    moment = datetime.fromtimestamp(millis / 1000.0, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def parse_time(text: object) -> float | None:
    """A time written by ``format_time`` or with whole seconds (older status); None when absent or bad."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
