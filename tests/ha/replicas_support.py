"""Helpers of the replica tests: a replica (an operator process and the proxy its Phala Cloud traffic
goes through), the Lease's holder, and a bounded wait."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcp_proxy import TcpProxy

from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.operator_process import OperatorProcess

LEASE = "cvm-prelaunch-operator"


@dataclass
class Replica:
    operator: OperatorProcess
    phala: TcpProxy  # everything this replica sends to Phala Cloud passes here

    @property
    def identity(self) -> str:
        return self.operator.identity

    def metric(self, name: str) -> float:
        """Sum of a metric family's samples (``name`` with its suffix, e.g. ``..._total``)."""
        total = 0.0
        for line in self.operator.metrics().splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def leading(self) -> bool:
        return self.metric("cvm_prelaunch_leader") == 1.0


ReplicaFactory = Callable[..., Replica]


def lease_holder(cp: ControlPlane, namespace: str) -> str:
    found = cp.kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json", check=False)
    if found.returncode != 0:
        return ""
    return str((json.loads(found.stdout).get("spec") or {}).get("holderIdentity") or "")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until ``predicate`` holds; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.1f}s: {what}")
        time.sleep(interval)
