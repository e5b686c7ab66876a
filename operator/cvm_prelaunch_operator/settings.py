"""Settings of the operator as a whole, from the environment (never from custom resources).

Every variable is declared once, with its default and meaning, on one of the dataclasses named in
``SETTINGS_CLASSES``; the README's settings table is generated from them (``settings_table()``, kept
equal by ``tests/unit/test_settings.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cvm_prelaunch_operator.chain.rpc import ChainRpcSettings
from cvm_prelaunch_operator.domain.config import from_env, parse_list, setting, settings_table
from cvm_prelaunch_operator.domain.fees import ChainPolicy
from cvm_prelaunch_operator.domain.retry import RetryPolicy
from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings

LogFormat = Literal["text", "json"]


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"{text!r} is not a log format (text or json)")
    return value


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"{text!r} is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return value


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = setting(
        "WATCH_NAMESPACES", (), "comma-separated namespaces to watch (empty: cluster-wide)", parse=parse_list
    )
    workers: int = setting(
        "MAX_CONCURRENT_RECONCILES",
        32,
        "resources reconciled at once; requeued looks (a pending transaction's next block) take at most "
        "a quarter and send their Kubernetes requests one at a time, the rest stay free for changes",
        minimum=1,
    )
    health_port: int = setting("HEALTH_PORT", 8081, "liveness and readiness endpoint `/healthz`", minimum=0)
    metrics_port: int = setting("METRICS_PORT", 8080, "Prometheus `/metrics` (`0` disables it)", minimum=0)
    log_level: str = setting("LOG_LEVEL", "INFO", "Python log level", parse=_log_level)
    log_format: str = setting(
        "LOG_FORMAT", "text", "`text`, or `json`: one JSON object per line", parse=_log_format
    )
    leader_election: bool = setting(
        "LEADER_ELECTION", True, "hold a `coordination.k8s.io/v1` Lease; only the holder reconciles"
    )
    leader_election_id: str = setting("LEADER_ELECTION_ID", "cvm-prelaunch-operator", "name of the Lease")
    leader_election_namespace: str = setting(
        "LEADER_ELECTION_NAMESPACE",
        "",
        "namespace of the Lease (empty: the pod's own namespace, `POD_NAMESPACE`)",
        shown="the pod's namespace",
    )
    pod_name: str = setting(
        "POD_NAME",
        "",
        "holder identity in the Lease (from the downward API; empty: the host name)",
        shown="the host name",
    )
    pod_namespace: str = setting(
        "POD_NAMESPACE", "", "the pod's namespace (from the downward API)", shown="empty"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        return from_env(cls, os.environ if environ is None else environ)


SETTINGS_CLASSES: tuple[type[Any], ...] = (
    OperatorSettings,
    PhalaCloudSettings,
    RetryPolicy,
    ChainPolicy,
    ChainRpcSettings,
)


def load(environ: Mapping[str, str] | None = None) -> tuple[OperatorSettings, RetryPolicy, ChainPolicy]:
    """The operator-wide settings read from the environment; ``ValueError`` names a bad variable."""
    env = os.environ if environ is None else environ
    return from_env(OperatorSettings, env), from_env(RetryPolicy, env), from_env(ChainPolicy, env)


def render_table() -> str:
    return settings_table(SETTINGS_CLASSES)


__all__ = ["SETTINGS_CLASSES", "LogFormat", "OperatorSettings", "load", "render_table"]
