"""The ``mainnet`` scenario (issue 11): many registrations waiting for confirmations on a chain with
Ethereum's 12-second blocks, while unrelated resources are edited.

Set-up: anvil mining every ``mainnet_block_time`` seconds (chain id 1), one app contract per CVM, all
owned by one key (one nonce stream, as a team with one owner key has), the operator with 32 workers,
its RPC behind a counting proxy; the simulator completes operations at once, so what is measured is
the chain side. Then ``mainnet_resources`` on-chain resources are created at once, and while they wait
for their confirmations, unrelated off-chain resources are edited one at a time.

Measured: for each registration, the time from the block that gives it its confirmations (first seen
by a watcher polling the head every 50 ms) to the resource's ``status.lastSyncTime``; the JSON-RPC calls
and HTTP requests per registration (the proxy's counts); the reaction (edit to Phase-1 PATCH) of the
off-chain resources meanwhile.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Protocol

from benchmarks.env import Bench, script_text
from benchmarks.stats import summary, target
from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import deploy_app_contract
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_localenv.simulator.server import LoggedRequest
from cvm_prelaunch_operator.domain.text import parse_time

ETHEREUM_CHAIN_ID = 1
DOCKER_COMPOSE = "services:\n  web:\n    image: nginx:1.27-alpine\n"


class HeadWatcher:
    """Polls the chain's head and remembers when each block was first seen (wall clock)."""

    def __init__(self, anvil: Anvil, interval: float = 0.05) -> None:
        self._w3 = anvil.web3()
        self._interval = interval
        self.first_seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head-watcher", daemon=True)

    def __enter__(self) -> HeadWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                number = int(self._w3.eth.block_number)
            except Exception:  # noqa: S112 - a missed poll is the next poll's
                continue
            self.first_seen.setdefault(number, time.time())


class MainnetSizes(Protocol):
    mainnet_resources: int
    mainnet_block_time: float
    mainnet_offchain: int


class MainnetRun(Protocol):
    """What the scenario needs of the suite's run (``benchmarks.scenarios.Run``)."""

    bench: Bench
    sizes: MainnetSizes


def mainnet(run: MainnetRun) -> dict[str, Any]:
    sizes = run.sizes
    bench = run.bench
    admin = bench.simulator.admin
    count = sizes.mainnet_resources
    confirmations = 2
    block_time = sizes.mainnet_block_time
    namespace = bench.namespace("bench-mainnet")
    with Anvil(chain_id=ETHEREUM_CHAIN_ID, log_dir=bench.work_dir / "anvil-mainnet") as chain:
        owner, deployer = chain.accounts[0], chain.accounts[-1]
        contracts = [
            deploy_app_contract(
                chain.rpc_url,
                owner.private_key,
                allow_any_device=True,
                deployer_private_key=deployer.private_key,
            )
            for _ in range(count)
        ]
        chain.set_interval_mining(int(block_time))  # from now on, a block every block_time seconds
        chain.set_automine(False)
        admin.settings(rpc_urls={ETHEREUM_CHAIN_ID: chain.rpc_url}, operation_seconds=0.0)
        workspace = admin.add_workspace(name="bench-mainnet")
        cvms = [
            admin.add_cvm(
                workspace=workspace["id"],
                name=f"bench-mainnet-{i}",
                kms_type="ethereum",
                chain_id=ETHEREUM_CHAIN_ID,
                app_id=address,
                docker_compose_file=DOCKER_COMPOSE,
                pre_launch_script=script_text("initial"),
            )
            for i, address in enumerate(contracts)
        ]
        offchain = [
            admin.add_cvm(
                workspace=workspace["id"],
                name=f"bench-mainnet-off-{i}",
                kms_type="phala",
                pre_launch_script=script_text("initial"),
            )
            for i in range(sizes.mainnet_offchain)
        ]
        with JsonRpcProxy(chain.rpc_url) as proxy, HeadWatcher(chain) as heads:
            common = [
                scenario.secret("api", namespace, {"api-key": workspace["api_key"]}),
                scenario.secret("signer", namespace, {"private-key": owner.private_key.reveal()}),
            ]
            off_bodies: list[dict[str, Any]] = []
            for i, cvm in enumerate(offchain):
                off_bodies += [
                    scenario.configmap(f"off-{i}", namespace, {"pre-launch.sh": script_text(f"off {i}")}),
                    scenario.cvm_prelaunch_script(
                        f"off-{i}",
                        namespace,
                        cvm_id=cvm.id,
                        config_map=f"off-{i}",
                        api_key_secret="api",  # noqa: S106
                    ),
                ]
            scenario.apply(bench.cp, *common, *off_bodies)
            operator = bench.start_operator(
                (namespace,), name="mainnet", extra_env={"MAX_CONCURRENT_RECONCILES": "32"}
            )
            try:
                for i in range(len(offchain)):
                    bench.wait_synced(namespace, f"off-{i}", script_text(f"off {i}"), timeout=120.0)
                bodies: list[dict[str, Any]] = []
                for i, cvm in enumerate(cvms):
                    bodies += [
                        scenario.configmap(
                            f"chain-{i}", namespace, {"pre-launch.sh": script_text(f"chain {i}")}
                        ),
                        scenario.cvm_prelaunch_script(
                            f"chain-{i}",
                            namespace,
                            cvm_id=cvm.id,
                            config_map=f"chain-{i}",
                            api_key_secret="api",  # noqa: S106
                            on_chain={
                                "rpcUrl": proxy.url,
                                "signerKeySecretRef": {"name": "signer", "key": "private-key"},
                                "confirmations": confirmations,
                            },
                        ),
                    ]
                proxy.reset_counts()
                created = time.time()
                scenario.apply(bench.cp, *bodies)
                # Once every registration is broadcast and waits for its blocks: unrelated edits, one at a
                # time, until the first registration is Synced.
                _wait_all_waiting(bench, namespace, count, timeout=block_time * 4 + 60)
                reactions = _reactions(run, namespace, offchain, until=lambda: _any_synced(bench, namespace))
                done = _wait_all_synced(
                    bench, namespace, count, timeout=block_time * (confirmations + 6) + 60
                )
            finally:
                operator.kill()
            rpc_calls = sum(proxy.calls.values())
            rpc_requests = proxy.http_requests
            calls_by_method = dict(proxy.calls.most_common())
    lags: list[float] = []
    for body in done:
        status = body["status"]
        receipt_block = _mined_in(status)
        seen = heads.first_seen.get(receipt_block + confirmations - 1)
        synced_at = parse_time(status.get("lastSyncTime"))
        if seen is not None and synced_at is not None:
            lags.append(max(0.0, synced_at - seen))
    lag_stats = summary([lag * 1000 for lag in lags])
    reaction_stats = summary(reactions)
    targets = [
        target("registrations Synced", len(done), count, "", at_most=False),
        target(
            "slowest: Synced after its confirmations", lag_stats.get("max", float("inf")) / 1000, 2.0, "s"
        ),
        target(
            "off-chain reaction p99 while they wait", reaction_stats.get("p99", float("inf")), 100.0, "ms"
        ),
    ]
    return {
        "title": f"Mainnet: {count} registrations on {block_time:g} s blocks, {confirmations} "
        "confirmations, 32 workers",
        "figures": {
            "resources": count,
            "block_time_seconds": block_time,
            "confirmations": confirmations,
            "rpc_http_requests_per_registration": round(rpc_requests / max(1, count), 1),
            "rpc_calls_per_registration": round(rpc_calls / max(1, count), 1),
            "rpc_calls_per_registration_by_method": {
                method: round(n / max(1, count), 1) for method, n in calls_by_method.items()
            },
            "created_to_all_synced_seconds": _last_sync(done, created),
            "reaction_edits": len(reactions),
        },
        "latency_ms": {
            "confirmation block first seen to Synced": lag_stats,
            "off-chain edit to Phase-1 PATCH while the registrations wait": reaction_stats,
        },
        "targets": targets,
        "notes": [
            "One owner key for all contracts (one nonce stream); operations complete at once, so Synced "
            "follows "
            "Phase 2 in the same pass. The head watcher polls every 50 ms: a block is first seen up to 50 "
            "ms after "
            "it was made, so the lags are that much shorter than from the block itself at most."
        ],
    }


def _last_sync(done: list[dict[str, Any]], created: float) -> float | None:
    times = [parse_time(b["status"].get("lastSyncTime")) for b in done]
    known = [t for t in times if t is not None]
    return round(max(known) - created, 1) if known else None


def _mined_in(status: dict[str, Any]) -> int:
    for registration in status.get("registrations") or []:
        if registration.get("transactionHash") == status.get("transactionHash"):
            return int(registration["blockNumber"])
    raise AssertionError(f"no registration recorded for {status.get('transactionHash')}")


def _reactions(run: MainnetRun, namespace: str, offchain: list[Any], *, until: Any) -> list[float]:
    bench = run.bench
    samples: list[float] = []
    i = 0
    while not until() and i < 200:
        index = i % len(offchain)
        cvm = offchain[index]
        text = script_text(f"off {index} {secrets.token_hex(4)}")
        began = time.monotonic()
        scenario.patch_configmap(bench.cp, namespace, f"off-{index}", {"pre-launch.sh": text})
        patch = bench.wait_request(_phase1_of(cvm.id, began), timeout=30.0, interval=0.005)
        samples.append((patch.started - began) * 1000)
        bench.wait_synced(namespace, f"off-{index}", text, timeout=60.0)
        i += 1
    return samples


def _phase1_of(cvm_id: str, after: float) -> Any:
    def check(r: LoggedRequest) -> bool:
        return r.method == "PATCH" and cvm_id in r.path and r.started >= after

    return check


def _chain_bodies(bench: Any, namespace: str) -> list[dict[str, Any]]:
    return [b for b in bench.resources(namespace) if b["metadata"]["name"].startswith("chain-")]


def _any_synced(bench: Any, namespace: str) -> bool:
    return any(scenario.is_synced(b) for b in _chain_bodies(bench, namespace))


def _wait_all_waiting(bench: Any, namespace: str, count: int, *, timeout: float) -> None:
    """Until every registration is broadcast: a signed transaction or a mined one in its state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [(b.get("status") or {}).get("inFlight") or {} for b in _chain_bodies(bench, namespace)]
        waiting = [s for s in states if s.get("transactions") or s.get("step") == "AwaitingConfirmations"]
        if len(waiting) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError("the registrations were never all broadcast")


def _wait_all_synced(bench: Any, namespace: str, count: int, *, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        bodies = [b for b in bench.resources(namespace) if b["metadata"]["name"].startswith("chain-")]
        synced = [b for b in bodies if scenario.is_synced(b)]
        if len(synced) >= count or time.monotonic() > deadline:
            return synced
        time.sleep(0.2)
