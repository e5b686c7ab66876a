"""Builds the reconcile core from its adapters: the one place that knows every concrete part.

``cli`` (process wiring, leader election, kopf) asks for a core here and never constructs adapters of
the reconcile ports itself, so the core's parts can change without touching the process wiring.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from cvm_prelaunch_operator.chain.rpc import ChainRpcSettings, Web3ChainConnector
from cvm_prelaunch_operator.chain.signer import EthAccountSigner
from cvm_prelaunch_operator.metrics import OperatorMetrics
from cvm_prelaunch_operator.phala.client import PhalaCloudClient
from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings
from cvm_prelaunch_operator.reconcile.engine import Reconciler
from cvm_prelaunch_operator.reconcile.ports import AlwaysLeader, Fence
from cvm_prelaunch_operator.scriptcheck.checker import ShellScriptChecker
from cvm_prelaunch_operator.settings import load

logger = logging.getLogger(__name__)


@dataclass
class Core:
    """The reconciler and what must be closed when the process ends."""

    reconciler: Reconciler
    close: Callable[[], Awaitable[None]]


def build_core(
    metrics: OperatorMetrics, *, fence: Fence | None = None, environ: Mapping[str, str] | None = None
) -> Core:
    env = os.environ if environ is None else environ
    _, policy, chain_policy = load(env)
    cloud = PhalaCloudClient(PhalaCloudSettings.from_env(env), observer=metrics.observe_request)
    chains = Web3ChainConnector(ChainRpcSettings.from_env(env), observer=metrics.observe_chain_request)
    checker = ShellScriptChecker()
    missing = checker.missing_tools()
    if missing:
        logger.error(
            "the script gate cannot find %s: scripts that need it are not uploaded until it is installed",
            ", ".join(missing),
        )
    reconciler = Reconciler(
        cloud,
        chains,
        EthAccountSigner(),
        checker=checker,
        fence=fence or AlwaysLeader(),
        observer=metrics.observer(),
        policy=policy,
        chain_policy=chain_policy,
    )

    async def close() -> None:
        await cloud.aclose()
        await chains.aclose()

    return Core(reconciler=reconciler, close=close)
