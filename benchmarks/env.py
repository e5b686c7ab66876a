"""The local environment the benchmarks run on: the real kube-apiserver with the project's CRD, the
Phala Cloud simulator in its own process, anvil, and operator processes; plus fast bulk creation of
resources and the waits and probes the scenarios share."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from prometheus_client.parser import text_string_to_metric_families

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.operator_process import OperatorProcess
from cvm_prelaunch_localenv.paths import repo_root
from cvm_prelaunch_localenv.processes import ManagedProcess
from cvm_prelaunch_localenv.scenario import GROUP, PLURAL, VERSION
from cvm_prelaunch_localenv.simulator.server import AdminClient, LoggedRequest

# Bulk creation runs this many API calls at once: enough to hide round trips, few enough that the
# API server on a small machine is not the thing measured.
CREATE_THREADS = 8
SCRIPT_KEY = "pre-launch.sh"


def _body(manifest: dict[str, Any]) -> Any:
    """The kubernetes client takes plain dicts as bodies; its annotations name only model classes."""
    return manifest


def script_text(label: str) -> str:
    return f"#!/bin/sh\necho 'benchmark script {label}'\n"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Simulator:
    """``python -m cvm_prelaunch_localenv.simulator`` as a separate process, so the benchmark driver
    never competes with it for one interpreter; its log timestamps use the same monotonic clock."""

    def __init__(self, work_dir: Path, *, operation_seconds: float) -> None:
        self._process = ManagedProcess(
            "simulator",
            [
                sys.executable,
                "-m",
                "cvm_prelaunch_localenv.simulator",
                "--operation-seconds",
                repr(operation_seconds),
            ],
            log_path=work_dir / "simulator.log",
        )
        self.base_url = ""
        self.admin_url = ""
        self._admin: AdminClient | None = None

    def start(self) -> Simulator:
        self._process.start()
        self._process.wait_until(self._read_urls, timeout=30.0)
        return self

    def _read_urls(self) -> bool:
        for line in self._process.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and "base_url" in line:
                urls = json.loads(line)
                self.base_url, self.admin_url = urls["base_url"], urls["admin_url"]
                return True
        return False

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.admin_url)
        return self._admin

    def requests(self) -> list[LoggedRequest]:
        return self.admin.requests()

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._process.stop()


@dataclass
class Fleet:
    """Off-chain CVMs in the simulator, each with a resource and (unless shared) its own ConfigMap."""

    namespace: str
    cvm_ids: list[str]
    names: list[str]
    config_maps: list[str]  # per resource: the ConfigMap it references
    scripts: dict[str, str] = field(default_factory=dict)  # ConfigMap -> current script

    def __len__(self) -> int:
        return len(self.names)


class Bench:
    """Everything a run shares: started once, torn down once."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.cp = ControlPlane(work_dir / "kube")
        self.sim: Simulator | None = None
        self._stack = contextlib.ExitStack()
        self._operators: list[OperatorProcess] = []
        self._api: k8s.ApiClient | None = None

    def __enter__(self) -> Bench:
        self._stack.__enter__()
        self.cp.start()
        self._stack.callback(self.cp.stop)
        crd = repo_root() / "crds" / "cloud.phala.com_cvmprelaunchscripts.yaml"
        self.cp.kubectl("apply", "-f", str(crd))
        self.cp.kubectl(
            "wait", "--for=condition=Established", "crd/cvmprelaunchscripts.cloud.phala.com", "--timeout=30s"
        )
        self.sim = Simulator(self.work_dir, operation_seconds=0.05).start()
        self._stack.callback(self.sim.stop)
        self._stack.callback(self._stop_operators)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(None, None, None)

    # -- clients ----------------------------------------------------------------------------------

    @property
    def api(self) -> k8s.ApiClient:
        if self._api is None:
            self._api = self.cp.api_client()
            self._api.configuration.connection_pool_maxsize = CREATE_THREADS * 2
        return self._api

    @property
    def simulator(self) -> Simulator:
        assert self.sim is not None, "the bench is not started"
        return self.sim

    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    # -- operators --------------------------------------------------------------------------------

    def start_operator(
        self, namespaces: tuple[str, ...], *, name: str, extra_env: Mapping[str, str] | None = None
    ) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=self.cp.kubeconfig,
            phala_api_url=self.simulator.base_url,
            namespaces=namespaces,
            extra_env=extra_env,
            log_path=self.work_dir / f"operator-{name}.log",
        )
        self._operators.append(process)
        return process.start(timeout=120.0)

    def _stop_operators(self) -> None:
        # SIGKILL: a graceful stop takes seconds and is measured only where it matters (restart).
        for process in self._operators:
            process.kill()

    # -- bulk creation ----------------------------------------------------------------------------

    def namespace(self, name: str) -> str:
        return self.cp.create_namespace(name, exist_ok=True)

    def run_parallel(self, calls: Iterable[Callable[[], object]]) -> None:
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            for future in [pool.submit(call) for call in calls]:
                future.result()

    def create_configmaps(self, namespace: str, data: Mapping[str, Mapping[str, str]]) -> None:
        create = self.core().create_namespaced_config_map
        self.run_parallel(
            partial(create, namespace, _body(scenario.configmap(name, namespace, values)))
            for name, values in data.items()
        )

    def create_secrets(self, namespace: str, count: int, *, kib: int, prefix: str) -> None:
        """``count`` Opaque Secrets of ``kib`` KiB of random text each; each value is made by the call
        that sends it, so the driver never holds them all."""
        create = self.core().create_namespaced_secret

        def one(index: int) -> None:
            value = secrets.token_hex(kib * 512)[: kib * 1024]
            create(namespace, _body(scenario.secret(f"{prefix}-{index}", namespace, {"blob": value})))

        self.run_parallel(partial(one, i) for i in range(count))

    def create_fleet(
        self, namespace: str, count: int, *, prefix: str, shared_config_map: bool = False
    ) -> Fleet:
        """``count`` off-chain CVMs in one new workspace, one API-key Secret, their resources and
        ConfigMaps (one per resource, or one for all)."""
        admin = self.simulator.admin
        workspace = admin.add_workspace(name=f"{namespace}-{prefix}")
        cvm_ids = [
            admin.add_cvm(
                workspace=workspace["id"],
                name=f"{namespace}-{prefix}-{i}",
                kms_type="phala",
                pre_launch_script=script_text("initial"),
            ).id
            for i in range(count)
        ]
        self.core().create_namespaced_secret(
            namespace, _body(scenario.secret(f"{prefix}-api", namespace, {"api-key": workspace["api_key"]}))
        )
        names = [f"{prefix}-{i}" for i in range(count)]
        config_maps = [f"{prefix}-script" if shared_config_map else f"{name}-script" for name in names]
        scripts = {cm: script_text("v0") for cm in dict.fromkeys(config_maps)}
        self.create_configmaps(namespace, {cm: {SCRIPT_KEY: text} for cm, text in scripts.items()})
        create = self.custom().create_namespaced_custom_object
        self.run_parallel(
            partial(
                create,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                scenario.cvm_prelaunch_script(
                    name, namespace, cvm_id=cvm, config_map=config_map, api_key_secret=f"{prefix}-api"
                ),
            )
            for name, cvm, config_map in zip(names, cvm_ids, config_maps, strict=True)
        )
        return Fleet(namespace, cvm_ids, names, config_maps, scripts)

    def edit_script(self, fleet: Fleet, config_map: str, text: str) -> None:
        self.core().patch_namespaced_config_map(config_map, fleet.namespace, {"data": {SCRIPT_KEY: text}})
        fleet.scripts[config_map] = text

    # -- waits ------------------------------------------------------------------------------------

    def resources(self, namespace: str) -> list[dict[str, Any]]:
        listed: Any = self.custom().list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        items: list[dict[str, Any]] = listed["items"]
        return items

    def wait_fleet_synced(self, fleet: Fleet, *, timeout: float, interval: float = 0.5) -> float:
        """Wait until every resource is Synced with its ConfigMap's current script; returns seconds."""
        began = time.monotonic()
        wanted = {
            name: sha256_text(fleet.scripts[cm])
            for name, cm in zip(fleet.names, fleet.config_maps, strict=True)
        }
        while True:
            done = sum(
                1
                for item in self.resources(fleet.namespace)
                if scenario.is_synced(item)
                and item["status"].get("scriptSha256") == wanted.get(item["metadata"]["name"])
            )
            if done == len(fleet):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise TimeoutError(
                    f"{done} of {len(fleet)} resources in {fleet.namespace} Synced after {timeout:.0f}s"
                )
            time.sleep(interval)

    def watch_fleet_synced(self, fleet: Fleet, since: str, *, timeout: float) -> float:
        """Follow a watch from resourceVersion ``since`` until every resource is Synced with its
        ConfigMap's current script; returns the monotonic time the last one got there. A watch sends
        only changes, so waiting costs the API server (and the measurement) nothing."""
        wanted = {
            name: sha256_text(fleet.scripts[cm])
            for name, cm in zip(fleet.names, fleet.config_maps, strict=True)
        }
        pending = set(fleet.names)
        deadline = time.monotonic() + timeout
        version = since
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(pending)} of {len(fleet)} resources not Synced after {timeout:.0f}s"
                )
            stream = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
                self.custom().list_namespaced_custom_object,
                GROUP,
                VERSION,
                fleet.namespace,
                PLURAL,
                resource_version=version,
                timeout_seconds=max(1, int(remaining)),
            )
            for event in stream:
                item = event["object"]
                version = item["metadata"]["resourceVersion"]
                name = item["metadata"]["name"]
                if (
                    name in pending
                    and scenario.is_synced(item)
                    and item["status"].get("scriptSha256") == wanted.get(name)
                ):
                    pending.discard(name)
                    if not pending:
                        return time.monotonic()
        return time.monotonic()

    def list_version(self, namespace: str) -> str:
        """The resourceVersion of a list of the namespace's resources: where a watch starts."""
        listed: Any = self.custom().list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        version: str = listed["metadata"]["resourceVersion"]
        return version

    def cpu_seconds(self, operator: OperatorProcess | None = None) -> dict[str, float]:
        """CPU time used so far by each server process of the environment (and an operator)."""
        pids = {"simulator": self.simulator.pid}
        for process in self.cp.processes:
            pids[process.name] = process.pid
        if operator is not None:
            pids["operator"] = operator.pid
        return {name: process_cpu_seconds(pid) for name, pid in pids.items() if pid is not None}

    def wait_synced(self, namespace: str, name: str, script: str, *, timeout: float = 60.0) -> None:
        digest = sha256_text(script)
        scenario.wait_for(
            self.cp,
            namespace,
            name,
            lambda body: scenario.is_synced(body) and body["status"].get("scriptSha256") == digest,
            timeout=timeout,
            interval=0.02,
            what=f"Synced with script {digest[:12]}",
        )

    def wait_request(
        self, predicate: Callable[[LoggedRequest], bool], *, timeout: float = 60.0, interval: float = 0.01
    ) -> LoggedRequest:
        """The first logged API request matching ``predicate`` (poll the simulator's log)."""
        deadline = time.monotonic() + timeout
        while True:
            for request in self.simulator.requests():
                if predicate(request):
                    return request
            if time.monotonic() > deadline:
                raise TimeoutError("the simulator never logged the awaited request")
            time.sleep(interval)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (and its waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def metric_samples(operator: OperatorProcess) -> dict[str, float]:
    """Every sample of the operator's metrics endpoint, keyed ``name{label=value,...}``."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of a family's samples whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        sample_name, _, rest = key.partition("{")
        if sample_name != name:
            continue
        present = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
        if all(present.get(k) == v for k, v in labels.items()):
            total += value
    return total


def kube_requests(samples: Mapping[str, float]) -> dict[str, float]:
    """The operator's own Kubernetes requests so far, as ``"METHOD resource"`` -> count."""
    counts: dict[str, float] = {}
    for key, value in samples.items():
        name, _, rest = key.partition("{")
        if name != "cvm_prelaunch_kubernetes_requests_total":
            continue
        labels = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
        what = f"{labels.get('method', '?')} {labels.get('resource', '?')}"
        counts[what] = counts.get(what, 0.0) + value
    return counts


def requests_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Requests made between two readings of ``kube_requests``, by kind (kinds with none left out)."""
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}


def try_metrics(operator: OperatorProcess) -> dict[str, float] | None:
    try:
        return metric_samples(operator)
    except (httpx.HTTPError, OSError):
        return None


def error_lines(log: str) -> list[str]:
    """Lines of an operator log at ERROR or CRITICAL, and tracebacks."""
    return [
        line
        for line in log.splitlines()
        if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
    ]
