"""Builds the reconcile core from its adapters: the one place that knows every concrete part.

``cli`` (process wiring, leader election, kopf) asks for a core here and never constructs adapters of
the reconcile ports itself, so the core's parts can change without touching the process wiring.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cvm_prelaunch_operator.chain.registrar import Web3Registrar
from cvm_prelaunch_operator.metrics import OperatorMetrics
from cvm_prelaunch_operator.phala.client import PhalaCloudClient
from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings
from cvm_prelaunch_operator.reconcile.ports import AlwaysLeader, Fence
from cvm_prelaunch_operator.reconcile.sync import Reconciler


@dataclass
class Core:
    """The reconciler and what must be closed when the process ends."""

    reconciler: Reconciler
    close: Callable[[], Awaitable[None]]


def build_core(metrics: OperatorMetrics, *, fence: Fence | None = None) -> Core:
    cloud = PhalaCloudClient(PhalaCloudSettings.from_env(), observer=metrics.observe_request)
    registrar = Web3Registrar()
    reconciler = Reconciler(
        cloud, registrar, on_drift=metrics.observe_drift, on_transaction=metrics.observe_transaction
    )
    _ = fence or AlwaysLeader()  # the typed-state engine checks it before every side effect

    async def close() -> None:
        await cloud.aclose()
        await registrar.aclose()

    return Core(reconciler=reconciler, close=close)
