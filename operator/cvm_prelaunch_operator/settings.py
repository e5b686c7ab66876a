"""Settings of the operator as a whole, from the environment (never from custom resources)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    workers: int = 32
    health_port: int = 8081
    metrics_port: int = 8080  # 0 disables the metrics endpoint
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("WATCH_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=namespaces,
            workers=_int(env, "MAX_CONCURRENT_RECONCILES", 32, minimum=1),
            health_port=_int(env, "HEALTH_PORT", 8081),
            metrics_port=_int(env, "METRICS_PORT", 8080),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
        )
