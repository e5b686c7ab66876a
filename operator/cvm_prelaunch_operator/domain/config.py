"""Operator settings declared once: each field names its environment variable, default and meaning.

A settings dataclass declares its fields with :func:`setting`; :func:`from_env` reads them from the
environment (an unset or empty variable keeps the default) and :func:`settings_table` renders the
README's table from the same declarations, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go-style durations (``10m``, ``1h30m``, ``500ms``, ``0``) in seconds."""
    text = text.strip()
    if text in ("0", ""):
        if text == "":
            raise ValueError("an empty duration")
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r}: use forms like 30s, 10m, 1h30m or 0s")
    return total


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true or false)")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def setting(
    env: str,
    default: T,
    doc: str,
    *,
    parse: Callable[[str], Any] | None = None,
    shown: str | None = None,
    minimum: float | None = None,
) -> T:
    """A dataclass field read from ``env``; ``shown`` is the default as the table prints it."""
    metadata = {"env": env, "doc": doc, "parse": parse, "shown": shown, "minimum": minimum}
    return dataclasses.field(default=default, metadata=metadata)


def _parser_for(field: dataclasses.Field[Any], default: object) -> Callable[[str], Any]:
    explicit = field.metadata.get("parse")
    if explicit is not None:
        return explicit  # type: ignore[no-any-return]
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, tuple):
        return parse_list
    return str


def from_env(cls: type[T], environ: Mapping[str, str], **overrides: Any) -> T:
    """An instance of ``cls`` with every declared setting read from ``environ``.

    Raises ``ValueError`` naming the variable when a value cannot be read or is below its minimum.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = field.metadata.get("env")
        if env is None or field.name in overrides:
            continue
        raw = environ.get(env, "")
        if raw == "":
            continue  # unset or empty: the default (a blank value is read, and refused where invalid)
        default = field.default
        parser = _parser_for(field, default)
        try:
            value = parser(raw.strip())
        except ValueError as exc:
            if parser is int:
                raise ValueError(f"{env} must be an integer, not {raw.strip()!r}") from None
            if parser is float:
                raise ValueError(f"{env} must be a number, not {raw.strip()!r}") from None
            raise ValueError(f"{env}: {exc}") from None
        minimum = field.metadata.get("minimum")
        if minimum is not None and isinstance(value, int | float) and value < minimum:
            raise ValueError(f"{env} must be at least {minimum:g}, not {raw.strip()!r}")
        values[field.name] = value
    values.update(overrides)
    return cls(**values)


def declared(classes: Iterable[type[Any]]) -> list[tuple[str, str, str]]:
    """(variable, default as shown, meaning) of every declared setting, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    for cls in classes:
        for field in dataclasses.fields(cls):
            env = field.metadata.get("env")
            if env is None:
                continue
            shown = field.metadata.get("shown")
            if shown is None:
                default = field.default
                if isinstance(default, bool):
                    shown = "true" if default else "false"
                elif isinstance(default, tuple):
                    shown = ",".join(default) or "empty"
                elif isinstance(default, float) and default.is_integer():
                    shown = str(int(default))
                else:
                    shown = str(default) if default != "" else "empty"
            rows.append((env, shown, str(field.metadata["doc"])))
    return rows


def settings_table(classes: Iterable[type[Any]]) -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{env}` | `{shown}` | {doc} |" for env, shown, doc in declared(classes)]
    return "\n".join(lines) + "\n"
