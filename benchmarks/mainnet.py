"""The ``mainnet`` scenario (issue 11): many registrations waiting for confirmations on a chain with
Ethereum's 12-second blocks, while unrelated resources are edited.

Set-up: anvil mining every ``mainnet_block_time`` seconds (chain id 1), one app contract per CVM, all
owned by one key (one nonce stream, as a team with one owner key has), the operator with 32 workers,
its RPC behind a counting proxy; the simulator completes operations at once, so what is measured is
the chain side. Then ``mainnet_resources`` on-chain resources are created at once, and while they wait
for their confirmations, unrelated off-chain resources are edited one at a time, at most ten a second
(400 at most), from when every registration is broadcast until the first is Synced.

Measured: for each registration, the time from the block that gives it its confirmations (first seen
by a watcher polling the head every 50 ms) to the resource's ``status.lastSyncTime``; the JSON-RPC calls
and HTTP requests per registration (the proxy's counts); the reaction (edit to Phase-1 PATCH) of the
off-chain resources meanwhile.
"""

from __future__ import annotations

import json
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
BURST_SECONDS = 1.5
UNTIL_EVERY_SECONDS = 0.5
EDIT_EVERY_SECONDS = 0.1  # at most ten edits a second
MAX_EDITS = 400
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
                # One edit of a ConfigMap no resource uses first: the API server's first patch of a
                # ConfigMap took half a second (its own warm-up), which is not the operator's reaction.
                scenario.apply(bench.cp, scenario.configmap("warm-up", namespace, {"k": "v"}))
                bench.core().patch_namespaced_config_map("warm-up", namespace, {"data": {"k": "w"}})
                timeline: list[Edit] = []
                reactions = _reactions(
                    run, namespace, offchain, until=lambda: _any_synced(bench, namespace), timeline=timeline
                )
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
    # The edits made in the 1.5 s after a block appeared, when the registrations waiting for it look at
    # it together, apart from the rest: where the tail comes from.
    block_times = sorted(heads.first_seen.values())
    in_burst = [
        ms for at, ms, _ in timeline if any(0.0 <= at - seen <= BURST_SECONDS for seen in block_times)
    ]
    (bench.work_dir / "mainnet-reactions.json").write_text(
        json.dumps({"blocks_first_seen": heads.first_seen, "edits": timeline})
    )
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
            "reaction_edits_within_1_5_s_after_a_block": len(in_burst),
        },
        "latency_ms": {
            "confirmation block first seen to Synced": lag_stats,
            "off-chain edit to Phase-1 PATCH while the registrations wait": reaction_stats,
            "the same, edits made within 1.5 s after a block appeared": summary(in_burst),
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


Edit = tuple[float, float, float]  # wall time of an edit, its reaction (ms), its own request (ms)


def _reactions(
    run: MainnetRun, namespace: str, offchain: list[Any], *, until: Any, timeline: list[Edit]
) -> list[float]:
    """Edits one at a time; ``timeline`` gets (wall time of the edit, its reaction, how long the edit's
    own request took, both in ms) of each.

    The harness keeps its own load down, since it shares the machine with what it measures: the
    simulator's request log is emptied before each edit (the wait for the edit's PATCH polls it every
    5 ms, and the whole log comes back each time), and ``until`` (a listing of every resource) is asked
    at most twice a second."""
    bench = run.bench
    samples: list[float] = []
    i = 0
    asked_until = 0.0
    start = time.monotonic()
    while i < MAX_EDITS:
        # Paced, so that the edits cover the whole wait (both blocks the registrations look at), not
        # only its beginning, however fast each one is.
        time.sleep(max(0.0, start + i * EDIT_EVERY_SECONDS - time.monotonic()))
        if time.monotonic() - asked_until >= UNTIL_EVERY_SECONDS:
            if until():
                break
            asked_until = time.monotonic()
        index = i % len(offchain)
        cvm = offchain[index]
        text = script_text(f"off {index} {secrets.token_hex(4)}")
        bench.simulator.admin.clear_requests()
        began = time.monotonic()
        began_wall = time.time()
        # The suite's long-lived client, as the reaction scenario's edits: a client made for each edit
        # would add its own set-up and TLS handshake to every figure (the first edit's most of all).
        bench.core().patch_namespaced_config_map(f"off-{index}", namespace, {"data": {"pre-launch.sh": text}})
        answered = time.monotonic()
        patch = bench.wait_request(_phase1_of(cvm.id, began), timeout=30.0, interval=0.005)
        samples.append((patch.started - began) * 1000)
        timeline.append((began_wall, samples[-1], (answered - began) * 1000))
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
    """Until every registration is broadcast and its pass over: its transaction is pending (the
    message of the look that follows the broadcast) or mined. A signed transaction in the state is not
    enough: it is recorded before it is broadcast, by a pass still under way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(_waits(body) for body in _chain_bodies(bench, namespace)) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError("the registrations were never all broadcast")


def _waits(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    in_flight = status.get("inFlight") or {}
    if in_flight.get("step") == "AwaitingConfirmations":
        return True
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return bool(in_flight.get("transactions")) and " is pending" in str(ready.get("message") or "")


def _wait_all_synced(bench: Any, namespace: str, count: int, *, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        bodies = [b for b in bench.resources(namespace) if b["metadata"]["name"].startswith("chain-")]
        synced = [b for b in bodies if scenario.is_synced(b)]
        if len(synced) >= count or time.monotonic() > deadline:
            return synced
        time.sleep(0.2)
