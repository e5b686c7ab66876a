"""The operator as a real process against the local environment (for tests, the demo, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from cvm_prelaunch_localenv.processes import ManagedProcess, free_port


class OperatorProcess:
    """``python -m cvm_prelaunch_operator`` with the environment a deployment would give it.

    Leader election is off unless ``lease_namespace`` is given: a single process needs no Lease.
    With it, the process competes for the Lease ``lease_name`` in that namespace as ``identity``
    (what ``POD_NAME`` would be in a pod; by default a name made of its health port).
    """

    def __init__(
        self,
        *,
        kubeconfig: Path,
        phala_api_url: str,
        namespaces: tuple[str, ...] = (),
        extra_env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        lease_namespace: str | None = None,
        lease_name: str = "cvm-prelaunch-operator",
        identity: str | None = None,
    ) -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.identity = identity or f"operator-{self.health_port}"
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="cvm-operator-")) / "operator.log"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KUBERNETES_", "PHALA_", "WATCH_", "LEADER_ELECTION", "POD_"))
        }
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "PHALA_CLOUD_API_URL": phala_api_url,
                "WATCH_NAMESPACES": ",".join(namespaces),
                "HEALTH_PORT": str(self.health_port),
                "METRICS_PORT": str(self.metrics_port),
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
                "LEADER_ELECTION": "true" if lease_namespace else "false",
                "POD_NAME": self.identity,
            }
        )
        if lease_namespace:
            env.update({"LEADER_ELECTION_NAMESPACE": lease_namespace, "LEADER_ELECTION_ID": lease_name})
        env.update(extra_env or {})
        self._process = ManagedProcess(
            "operator", [sys.executable, "-m", "cvm_prelaunch_operator"], log_path=self.log_path, env=env
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        self._process.start()
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        self._process.wait_until(lambda: httpx.get(url, timeout=1.0).status_code == 200, timeout=timeout)
        return self

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill would: no clean-up code runs."""
        if self._process.popen is not None and self._process.alive():
            os.killpg(self._process.popen.pid, signal.SIGKILL)
            self._process.popen.wait(timeout=10)
        self._process.stop()

    def stop(self) -> None:
        self._process.stop(grace=10.0)

    def terminate(self) -> None:
        """SIGTERM, as Kubernetes sends it to a pod being deleted; returns at once."""
        if self._process.popen is not None and self._process.alive():
            os.kill(self._process.popen.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int:
        """The exit code, once the process has ended (``TimeoutError`` if it has not in time)."""
        if self._process.popen is None:
            raise RuntimeError("the operator was never started")
        try:
            return self._process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the operator still runs after {timeout:.0f}s") from None

    def alive(self) -> bool:
        return self._process.alive()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5.0).text

    def wait_for_log(self, needle: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.logs():
            if time.monotonic() > deadline:
                raise TimeoutError(f"operator log never showed {needle!r}")
            time.sleep(0.05)

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
