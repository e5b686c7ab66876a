"""Two operator processes with leader election against the real API server and the simulator: one
reconciles, the other waits; the Lease changes hands on SIGTERM at once, on SIGKILL after it expires;
a leader cut off from the API server, or one that loses the Lease mid-flight, stops acting.

Timings are the deployed ones (lease 15 s, renew deadline 10 s, retry 2 s)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml
from eth_utils.crypto import keccak
from replicas_support import LEASE, Replica, ReplicaFactory, lease_holder, wait_until
from tcp_proxy import TcpProxy

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_localenv.scenario import SCRIPT_V1, SCRIPT_V2, Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.kube.leader import LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD

COMPOSE_HASH_ADDED = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"
SLACK = 0.5  # a poll of the Lease and a round trip, on a loaded 2-core machine


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synced_with(setup: Workbench, script: str, timeout: float = 30.0) -> dict[str, object]:
    want = sha256(script)
    body: dict[str, object] = setup.wait(
        "app",
        lambda b: scenario.is_synced(b) and b["status"].get("scriptSha256") == want,
        f"Synced with {want[:12]}",
        timeout,
    )
    return body


def pair(replicas: ReplicaFactory, cp: ControlPlane, namespace: str) -> tuple[Replica, Replica]:
    """Two replicas; returns (leader, standby) once the Lease names one of them."""
    a, b = replicas(), replicas()
    wait_until(lambda: lease_holder(cp, namespace) in (a.identity, b.identity), 10.0, "a leader")
    return (a, b) if lease_holder(cp, namespace) == a.identity else (b, a)


def kube_requests(replica: Replica, method: str) -> float:
    total = 0.0
    for line in replica.operator.metrics().splitlines():
        if line.startswith("cvm_prelaunch_kubernetes_requests_total{") and f'method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_of_two_replicas_exactly_one_reconciles(
    setup: Workbench,
    offchain_cvm: SimTarget,
    replicas: ReplicaFactory,
    sim: SimulatorServer,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    leader, standby = pair(replicas, control_plane, namespace)
    setup.create(offchain_cvm)
    synced_with(setup, SCRIPT_V1)
    scenario.patch_configmap(control_plane, namespace, "app-script", {"pre-launch.sh": SCRIPT_V2})
    synced_with(setup, SCRIPT_V2)
    assert sim.admin.cvm_state(offchain_cvm.id)["pre_launch_script"] == SCRIPT_V2

    assert leader.leading() and not standby.leading()
    # Everything the simulator logged came from the leader; nothing at all from the standby.
    logged = sim.admin.requests()
    assert logged and leader.metric("cvm_prelaunch_phala_requests_total") == len(logged)
    assert standby.phala.connections == 0 and standby.phala.bytes_up == 0
    assert standby.metric("cvm_prelaunch_phala_requests_total") == 0
    # The standby watched (its metrics count the resource) but never reconciled or wrote.
    assert standby.metric("cvm_prelaunch_reconciles_total") == 0
    assert standby.metric("cvm_prelaunch_resources") == 1
    assert kube_requests(standby, "PATCH") == 0 and kube_requests(standby, "POST") == 0
    assert kube_requests(leader, "PATCH") >= 2
    # Both are healthy and Ready: being standby is not a failure.
    for replica in (leader, standby):
        health = httpx.get(f"http://127.0.0.1:{replica.operator.health_port}/healthz", timeout=5)
        assert health.status_code == 200
    assert "acquired Lease" in leader.operator.logs()
    assert f"is held by {leader.identity}" in standby.operator.logs()


def test_sigterm_hands_the_lease_over_at_once_and_the_new_leader_uploads_the_next_edit(
    setup: Workbench,
    offchain_cvm: SimTarget,
    replicas: ReplicaFactory,
    sim: SimulatorServer,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    leader, standby = pair(replicas, control_plane, namespace)
    setup.create(offchain_cvm)
    synced_with(setup, SCRIPT_V1)

    leader.operator.terminate()
    terminated = time.monotonic()
    handed = wait_until(
        lambda: lease_holder(control_plane, namespace) == standby.identity, 5.0, "the Lease changes hands"
    )
    assert handed - terminated <= 5.0
    assert leader.operator.wait_exit(timeout=15) == 0
    assert "released Lease" in leader.operator.logs()

    sim.admin.clear_requests()
    edited = time.monotonic()
    scenario.patch_configmap(control_plane, namespace, "app-script", {"pre-launch.sh": SCRIPT_V2})
    wait_until(
        lambda: any(r.method == "PATCH" and r.cvm == offchain_cvm.id for r in sim.admin.requests()),
        5.0,
        "the edit is uploaded",
    )
    (phase1,) = [r for r in sim.admin.requests() if r.method == "PATCH" and r.cvm == offchain_cvm.id]
    assert phase1.started - edited <= 2.0, f"uploaded {phase1.started - edited:.2f}s after the edit"
    synced_with(setup, SCRIPT_V2)
    assert standby.leading()
    assert standby.phala.bytes_up > 0 and leader.phala.last_up is not None
    assert leader.phala.last_up < handed  # the old leader sent nothing once it had let go


def test_sigkill_while_a_broadcast_is_held_the_standby_finishes_the_registration_once(
    setup: Workbench,
    onchain_cvm: SimTarget,
    replicas: ReplicaFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    with JsonRpcProxy(anvil.rpc_url) as rpc:
        rpc.hold_sends()  # the node takes the transaction and answers its hash, but never mines it
        leader, standby = pair(replicas, control_plane, namespace)
        setup.create(onchain_cvm, on_chain={"rpcUrl": rpc.url})
        wait_until(lambda: bool(rpc.held), 30.0, "the registration is broadcast", interval=0.02)
        leader.operator.kill()
        killed = time.monotonic()
        # One signed transaction (perhaps broadcast more than once). The node loses it: the new leader
        # must send that very transaction again, never sign another.
        rpc.hold_sends(False)
        held = set(rpc.held)
        assert len(held) == 1 and rpc.drop_held() >= 1
        acquired = wait_until(
            lambda: lease_holder(control_plane, namespace) == standby.identity,
            LEASE_DURATION + RETRY_PERIOD + 5,
            "the standby takes the Lease",
            interval=0.2,
        )
        assert acquired - killed <= LEASE_DURATION + RETRY_PERIOD, f"took {acquired - killed:.1f}s"
        body = setup.synced(timeout=60)

    compose_hash = str(body["status"]["composeHash"])
    assert compose_hash == "0x" + sim.admin.cvm_state(onchain_cvm.id)["compose_hash"]
    logs = anvil.web3().eth.get_logs(
        {
            "address": onchain_cvm.contract.address,  # type: ignore[union-attr]
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [COMPOSE_HASH_ADDED],
        }
    )
    assert [bytes(log["data"]).hex() for log in logs].count(compose_hash.removeprefix("0x")) == 1
    (tx,) = held
    assert body["status"]["transactionHash"] == "0x" + keccak(hexstr=tx).hex().removeprefix("0x")
    accepted_phase2 = [
        r
        for r in sim.admin.requests()
        if r.method == "PATCH" and r.header("x-compose-hash") and r.status == 202 and r.cvm == onchain_cvm.id
    ]
    assert len(accepted_phase2) == 1
    assert standby.phala.bytes_up > 0


def kubeconfig_through(cp: ControlPlane, proxy: TcpProxy, path: Path) -> Path:
    config = yaml.safe_load(cp.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_a_leader_cut_off_from_the_api_server_stops_before_its_lease_could_expire_and_exits(
    setup: Workbench,
    offchain_cvm: SimTarget,
    replicas: ReplicaFactory,
    sim: SimulatorServer,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    api_port = int(control_plane.server.rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", api_port) as api:
        leader = replicas(kubeconfig=kubeconfig_through(control_plane, api, tmp_path / "kubeconfig"))
        wait_until(lambda: lease_holder(control_plane, namespace) == leader.identity, 10.0, "it leads")
        standby = replicas()
        # The update stays in progress, so the leader keeps asking Phala Cloud about it.
        sim.admin.settings(operation_seconds=25)  # past the fence deadline, done soon after the failover
        setup.create(offchain_cvm)
        setup.wait("app", lambda b: bool((b.get("status") or {}).get("correlationId")), "Phase 1 accepted")
        api.pause()
        cut = time.monotonic()
        assert leader.operator.wait_exit(timeout=RENEW_DEADLINE + 20) == 1
        exited = time.monotonic()
        logs = leader.operator.logs()
        assert "renew deadline passed" in logs and "exiting after losing the leader Lease" in logs
        # Its last renewal began before the cut, so its fence closed by cut + renew deadline, and it
        # sent nothing after that (a moment to cancel what was under way); the Lease could expire for
        # the standby no earlier than cut - retry period + lease duration, seconds later.
        assert leader.phala.last_up is not None
        sent = leader.phala.last_up - cut
        assert sent <= RENEW_DEADLINE + SLACK, f"sent {sent:.2f}s after the cut"
        assert RENEW_DEADLINE + SLACK < LEASE_DURATION - RETRY_PERIOD
        assert exited - cut <= RENEW_DEADLINE + 10
        # The standby takes over once the Lease has expired, and finishes the sync.
        wait_until(
            lambda: lease_holder(control_plane, namespace) == standby.identity,
            LEASE_DURATION + RETRY_PERIOD + 5,
            "the standby takes the Lease",
            interval=0.2,
        )
        synced_with(setup, SCRIPT_V1, timeout=60)
        assert standby.phala.bytes_up > 0


def test_a_leader_that_loses_the_lease_mid_flight_never_broadcasts_or_patches_after(
    setup: Workbench,
    onchain_cvm: SimTarget,
    replicas: ReplicaFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    control_plane: ControlPlane,
    namespace: str,
) -> None:
    with JsonRpcProxy(anvil.rpc_url) as rpc:
        leader = replicas()
        wait_until(lambda: lease_holder(control_plane, namespace) == leader.identity, 10.0, "it leads")
        # Phase 1 answers 465 after 5 s; without a fence the leader would then register and broadcast.
        sim.admin.inject(cvm=onchain_cvm.id, method="PATCH", path="pre-launch-script", latency_ms=5000)
        setup.create(onchain_cvm, on_chain={"rpcUrl": rpc.url})
        wait_until(
            lambda: any(r.method == "PATCH" and r.cvm == onchain_cvm.id for r in sim.admin.requests()),
            20.0,
            "Phase 1 is under way",
        )
        # Another holder writes itself into the Lease (as after a partition the leader did not notice).
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = f'{{"holderIdentity":"intruder","renewTime":"{now}","leaseDurationSeconds":60}}'
        patch = f'{{"spec":{spec}}}'
        control_plane.kubectl("patch", "lease", LEASE, "-n", namespace, "--type=merge", "-p", patch)
        stolen = time.monotonic()
        assert leader.operator.wait_exit(timeout=RETRY_PERIOD + 15) == 1
        time.sleep(max(0.0, stolen + 6.0 - time.monotonic()))  # past the held answer to Phase 1
        assert "lost Lease" in leader.operator.logs() and "intruder" in leader.operator.logs()
        assert rpc.count("eth_sendRawTransaction") == 0 and not rpc.held
        patches = [r for r in sim.admin.requests() if r.method == "PATCH" and r.cvm == onchain_cvm.id]
        assert len(patches) == 1 and patches[0].started < stolen  # only the one under way before
        assert leader.phala.last_up is not None and leader.phala.last_up <= stolen + RETRY_PERIOD + SLACK
        assert lease_holder(control_plane, namespace) == "intruder"
