"""The reconcile core against in-memory fakes of its ports: decisions, crash safety, failures.

The same behaviours are exercised end to end against the real API server, simulator and anvil in
tests/operator/; here every interleaving is cheap to reach, crashes included.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from cvm_prelaunch_operator.domain.compose_hash import app_compose_with_script, compose_hash
from cvm_prelaunch_operator.domain.errors import (
    Permanent,
    RecheckChain,
    RegistrationRequired,
    RetryLater,
    StartOver,
)
from cvm_prelaunch_operator.domain.models import (
    ComposeHashChallenge,
    CvmInfo,
    Operation,
    PendingTransaction,
    Registration,
    UpdateAccepted,
)
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import ResourceSnapshot
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.reconcile.ports import (
    ChainTarget,
    PersistPending,
    RegistrationRequest,
    ScriptSource,
    StatusConflict,
)
from cvm_prelaunch_operator.reconcile.sync import Outcome, Reconciler

API_KEY = "phak_unit_test_key_0123456789"
SIGNER = "0x" + "ab" * 32
CONTRACT = "0x" + "12" * 20
APP_ID = "12" * 20


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the reconciler catches it."""


def _compose_text(script: str) -> str:
    compose = {"docker_compose_file": "services: {}", "runner": "docker-compose", "name": "app"}
    if script:
        compose["pre_launch_script"] = script
    return json.dumps(compose, sort_keys=True, indent=4, separators=(",", ":"))


@dataclass
class FakeCloud:
    on_chain: bool = False
    script: str = "echo old"
    busy_operations: int = 0
    wrong_hash: bool = False
    phase1_calls: int = 0
    phase2_calls: int = 0
    phase2_answers: list[Exception] = field(default_factory=list)
    operation_failure: str | None = None
    crash_after_phase2: bool = False
    pending_script: str | None = None
    correlations: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    calls: list[str] = field(default_factory=list)
    running: str | None = None

    def for_api_key(self, api_key: Secret) -> FakeCloud:
        assert api_key.reveal() == API_KEY
        return self

    @property
    def compose_hash(self) -> str:
        return hashlib.sha256(_compose_text(self.script).encode()).hexdigest()

    def _hash_for(self, script: bytes) -> str:
        return compose_hash(app_compose_with_script(_compose_text(self.script), script))

    async def get_cvm(self, cvm_id: str) -> CvmInfo:
        self.calls.append("get_cvm")
        return CvmInfo(
            id=cvm_id,
            name="app",
            app_id=APP_ID,
            vm_uuid=None,
            status="running",
            in_progress=self.pending_script is not None,
            progress_correlation_id=self.running if self.pending_script is not None else None,
            compose_hash=self.compose_hash,
            pre_launch_script_hash=None,
            kms_type="base" if self.on_chain else "phala",
            chain_id=31337 if self.on_chain else None,
            app_contract=CONTRACT if self.on_chain else None,
        )

    async def get_pre_launch_script(self, cvm_id: str) -> str:
        self.calls.append("get_script")
        return self.script

    async def patch_pre_launch_script(
        self,
        cvm_id: str,
        script: bytes,
        *,
        compose_hash: str | None = None,
        transaction_hash: str | None = None,
    ) -> UpdateAccepted:
        if compose_hash is None:
            self.phase1_calls += 1
            self.calls.append("phase1")
            if self.on_chain:
                claimed = "0x" + ("ff" * 32 if self.wrong_hash else self._hash_for(script))
                raise RegistrationRequired(
                    "register",
                    challenge=ComposeHashChallenge(claimed, APP_ID, "dd" * 32, 31337, {}),
                    status_code=465,
                )
        else:
            self.phase2_calls += 1
            self.calls.append("phase2")
            assert compose_hash == "0x" + self._hash_for(script)
            if self.phase2_answers:
                raise self.phase2_answers.pop(0)
        self.pending_script = script.decode()
        self.running = f"corr-{next(self.correlations)}"
        if self.crash_after_phase2 and compose_hash is not None:
            self.crash_after_phase2 = False
            raise Crash
        return UpdateAccepted(correlation_id=self.running, status="in_progress", message="ok")

    async def get_app_compose(self, cvm_id: str) -> str:
        self.calls.append("app_compose")
        return _compose_text(self.script)

    async def find_operation(self, cvm_id: str, correlation_id: str) -> Operation | None:
        self.calls.append("operation")
        if self.busy_operations > 0:
            self.busy_operations -= 1
            return Operation(correlation_id, "update", "in_progress")
        if self.operation_failure:
            return Operation(correlation_id, "update", "failed", error_message=self.operation_failure)
        if self.pending_script is not None:
            self.script, self.pending_script = self.pending_script, None
        return Operation(correlation_id, "update", "completed")


@dataclass
class FakeRegistrar:
    """Models a chain: a signed transaction is 'broadcast' once and mined on resume or completion."""

    crash_at: str | None = None  # "after_persist" | "after_broadcast"
    failure: Exception | None = None
    broadcasts: Counter[str] = field(default_factory=Counter)
    mined: dict[str, int] = field(default_factory=dict)  # tx hash -> block
    allowed: set[str] = field(default_factory=set)
    nonce: itertools.count[int] = field(default_factory=itertools.count)
    verified: list[str] = field(default_factory=list)
    known: list[str | None] = field(default_factory=list)

    async def register(
        self,
        request: RegistrationRequest,
        *,
        persist: PersistPending,
        resume_from: PendingTransaction | None = None,
    ) -> Registration:
        if self.failure is not None:
            raise self.failure
        self.known.append(request.known_tx_hash)
        if request.known_tx_hash in self.mined and request.compose_hash in self.allowed:
            return Registration(
                request.compose_hash,
                request.known_tx_hash,
                self.mined[request.known_tx_hash],
                request.target.chain_id,
                reused=True,
            )
        if resume_from is not None:
            if resume_from.tx_hash not in self.mined:
                self._broadcast(resume_from)
            return self._registration(resume_from)
        nonce = next(self.nonce)
        pending = PendingTransaction(
            chain_id=request.target.chain_id,
            sender="0xowner",
            nonce=nonce,
            tx_hash="0x" + hashlib.sha256(f"{request.compose_hash}{nonce}".encode()).hexdigest(),
            raw_transaction="0xf8",
            compose_hash=request.compose_hash,
            app_contract=request.target.app_contract,
        )
        await persist(pending)
        if self.crash_at == "after_persist":
            self.crash_at = None
            raise Crash
        self._broadcast(pending)
        if self.crash_at == "after_broadcast":
            self.crash_at = None
            raise Crash
        return self._registration(pending)

    def _broadcast(self, pending: PendingTransaction) -> None:
        self.broadcasts[pending.compose_hash] += 1
        self.mined[pending.tx_hash] = len(self.mined) + 1
        self.allowed.add(pending.compose_hash)

    def _registration(self, pending: PendingTransaction) -> Registration:
        return Registration(
            pending.compose_hash, pending.tx_hash, self.mined[pending.tx_hash], pending.chain_id
        )

    async def verify_registration(
        self, target: ChainTarget, compose_hash: str, tx_hash: str, confirmations: int
    ) -> Registration:
        self.verified.append(tx_hash)
        return Registration(compose_hash, tx_hash, 7, target.chain_id)


@dataclass
class FakeCluster:
    """The resource, its ConfigMap and Secrets, with resourceVersion-guarded status writes."""

    spec: dict[str, Any]
    script: str = "echo new"
    annotations: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    rv: int = 1
    events: list[tuple[str, str, str]] = field(default_factory=list)
    secrets: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"api": {"key": API_KEY}, "signer": {"key": SIGNER}}
    )
    writes: int = 0
    configmap_rv: int = 1

    def snapshot(self) -> ResourceSnapshot:
        return ResourceSnapshot(
            namespace="ns",
            name="res",
            uid="uid-1",
            generation=self.generation,
            resource_version=str(self.rv),
            spec=copy.deepcopy(self.spec),
            annotations=dict(self.annotations),
            status=copy.deepcopy(self.status),
        )

    def io(self) -> FakeIO:
        return FakeIO(self, str(self.rv))

    def edit_script(self, script: str) -> None:
        self.script = script
        self.configmap_rv += 1


@dataclass
class FakeIO:
    cluster: FakeCluster
    rv: str

    async def read_script(self, config_map: str, key: str) -> ScriptSource:
        if config_map != "scripts":
            raise Permanent("ConfigMap ns/x not found", reason=Reason.CONFIGMAP_NOT_FOUND)
        return ScriptSource(
            self.cluster.script.encode(), config_map, "cm-uid", str(self.cluster.configmap_rv)
        )

    async def read_secret(self, name: str, key: str) -> Secret:
        try:
            return Secret(self.cluster.secrets[name][key])
        except KeyError:
            raise Permanent(f"Secret ns/{name} not found", reason=Reason.SECRET_NOT_FOUND) from None

    async def secret_version(self, name: str) -> str | None:
        if name not in self.cluster.secrets:
            return None
        return hashlib.sha256(json.dumps(self.cluster.secrets.get(name)).encode()).hexdigest()[:8]

    async def patch_status(self, patch: dict[str, object]) -> None:
        if self.rv != str(self.cluster.rv):
            raise StatusConflict("changed")
        for key, value in patch.items():
            if value is None:
                self.cluster.status.pop(key, None)
            else:
                self.cluster.status[key] = copy.deepcopy(value)
        self.cluster.rv += 1
        self.cluster.writes += 1
        self.rv = str(self.cluster.rv)

    async def record_event(self, type_: str, reason: str, message: str) -> None:
        self.cluster.events.append((type_, reason, message))


def _spec(*, on_chain: bool = False, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cvmId": "cvm-1",
        "scriptRef": {"name": "scripts", "key": "run.sh"},
        "apiKeySecretRef": {"name": "api", "key": "key"},
        "driftCheckInterval": "0s",
    }
    if on_chain:
        spec["onChain"] = {
            "rpcUrl": "http://127.0.0.1:8545",
            "signerKeySecretRef": {"name": "signer", "key": "key"},
        }
    spec.update(extra)
    return spec


async def _run(reconciler: Reconciler, cluster: FakeCluster, max_passes: int = 20) -> Outcome:
    """Reconcile until nothing is left to do now (as the work queue would, minus the waiting)."""
    outcome = Outcome()
    for _ in range(max_passes):
        try:
            outcome = await reconciler.reconcile(cluster.snapshot(), cluster.io())
        except StatusConflict:
            continue
        if outcome.requeue_after is None or outcome.requeue_after > 5:
            return outcome
    return outcome


def _ready(cluster: FakeCluster) -> dict[str, Any]:
    return next(c for c in cluster.status["conditions"] if c["type"] == "Ready")


async def test_off_chain_sync_then_nothing_to_do() -> None:
    cloud, chain = FakeCloud(), FakeRegistrar()
    cluster = FakeCluster(_spec())
    await _run(Reconciler(cloud, chain), cluster)

    assert cluster.status["phase"] == "Synced"
    assert _ready(cluster)["status"] == "True" and _ready(cluster)["reason"] == "Synced"
    assert cluster.status["scriptSha256"] == hashlib.sha256(b"echo new").hexdigest()
    assert cluster.status["correlationId"] == "corr-1"
    assert cluster.status["composeHash"] == "0x" + cloud.compose_hash
    assert "inFlight" not in cluster.status
    assert cloud.script == "echo new" and cloud.phase1_calls == 1 and chain.broadcasts == Counter()
    assert [e[1] for e in cluster.events] == ["UploadStarted", "UpdateAccepted", "Applied"]

    writes, calls = cluster.writes, len(cloud.calls)
    await _run(Reconciler(cloud, chain), cluster)
    assert cluster.writes == writes and len(cloud.calls) == calls  # level-based: no remote call, no write


async def test_on_chain_sync_registers_once_and_applies() -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar()
    cluster = FakeCluster(_spec(on_chain=True))
    await _run(Reconciler(cloud, chain), cluster)

    assert cluster.status["phase"] == "Synced", cluster.status
    registered = "0x" + compose_hash(app_compose_with_script(_compose_text("echo old"), "echo new"))
    assert chain.broadcasts == Counter({registered: 1})
    assert cloud.phase2_calls == 1
    assert cluster.status["composeHash"] == registered == "0x" + cloud.compose_hash
    assert cluster.status["transactionHash"].startswith("0x")
    assert cluster.status["registrations"][0]["composeHash"] == registered
    assert [e[1] for e in cluster.events] == [
        "UploadStarted",
        "RegistrationSent",
        "RegistrationConfirmed",
        "UpdateAccepted",
        "Applied",
    ]


@pytest.mark.parametrize("crash_at", ["after_persist", "after_broadcast"])
async def test_crash_around_broadcast_never_sends_twice(crash_at: str) -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar(crash_at=crash_at)
    cluster = FakeCluster(_spec(on_chain=True))
    with pytest.raises(Crash):
        await _run(Reconciler(cloud, chain), cluster)
    assert cluster.status["inFlight"]["pendingTransaction"]["txHash"]  # recorded before broadcast

    await _run(Reconciler(cloud, chain), cluster)  # "restarted operator": a new reconciler, same status
    assert cluster.status["phase"] == "Synced"
    assert sum(chain.broadcasts.values()) == 1
    assert cloud.phase2_calls == 1


async def test_crash_after_phase2_follows_instead_of_repeating() -> None:
    cloud, chain = FakeCloud(on_chain=True, crash_after_phase2=True), FakeRegistrar()
    cluster = FakeCluster(_spec(on_chain=True))
    with pytest.raises(Crash):
        await _run(Reconciler(cloud, chain), cluster)
    # Phase 2 was accepted by the server but the operator died before recording it. On restart the
    # operator looks first, finds the update running and follows it: no second Phase 2, no new tx.
    await _run(Reconciler(cloud, chain), cluster)
    assert cluster.status["phase"] == "Synced"
    assert cluster.status["correlationId"] == "corr-1"
    assert sum(chain.broadcasts.values()) == 1
    assert cloud.phase2_calls == 1


async def test_script_edited_during_registration_is_never_applied() -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar(crash_at="after_broadcast")
    cluster = FakeCluster(_spec(on_chain=True), script="echo v1")
    with pytest.raises(Crash):
        await _run(Reconciler(cloud, chain), cluster)
    cluster.edit_script("echo v2")
    await _run(Reconciler(cloud, chain), cluster)

    assert cloud.script == "echo v2"
    assert cluster.status["phase"] == "Synced"
    assert cluster.status["scriptSha256"] == hashlib.sha256(b"echo v2").hexdigest()
    # v1's transaction was settled (not re-signed), v2 got its own; v1 was never sent in Phase 2.
    assert sorted(chain.broadcasts.values()) == [1, 1]
    assert cloud.phase2_calls == 1
    assert len(cluster.status["registrations"]) == 2


async def test_returning_to_a_registered_script_reuses_the_known_transaction() -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar()
    cluster = FakeCluster(_spec(on_chain=True), script="echo a")
    reconciler = Reconciler(cloud, chain)
    await _run(reconciler, cluster)
    first = cluster.status["registrations"][0]
    cluster.edit_script("echo b")
    await _run(reconciler, cluster)
    cluster.edit_script("echo a")  # the same app-compose again: the same compose hash
    await _run(reconciler, cluster)

    assert cluster.status["phase"] == "Synced"
    assert chain.known == [None, None, first["transactionHash"]]
    assert chain.broadcasts[first["composeHash"]] == 1  # reused, not sent again


async def test_wrong_compose_hash_is_refused_and_stalls() -> None:
    cloud, chain = FakeCloud(on_chain=True, wrong_hash=True), FakeRegistrar()
    cluster = FakeCluster(_spec(on_chain=True))
    outcome = await _run(Reconciler(cloud, chain), cluster)

    assert outcome.requeue_after is None
    assert cluster.status["phase"] == "Failed"
    assert _ready(cluster)["reason"] == "ComposeHashMismatch"
    stalled = next(c for c in cluster.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    assert chain.broadcasts == Counter()
    assert cluster.events[-1][0] == "Warning"

    calls = len(cloud.calls)
    await _run(Reconciler(cloud, chain), cluster)  # nothing changed: no retry
    assert len(cloud.calls) == calls

    cloud.wrong_hash = False
    cluster.edit_script("echo fixed")  # an input changed: retried
    await _run(Reconciler(cloud, chain), cluster)
    assert cluster.status["phase"] == "Synced"


async def test_manual_approval_waits_for_the_annotation() -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar()
    spec = _spec(on_chain=True)
    spec["onChain"]["approval"] = "Manual"
    cluster = FakeCluster(spec)
    await _run(Reconciler(cloud, chain), cluster)
    assert cluster.status["phase"] == "AwaitingApproval"
    assert _ready(cluster)["reason"] == "AwaitingApproval"
    wanted = cluster.status["composeHash"]
    assert wanted in _ready(cluster)["message"]
    assert chain.broadcasts == Counter()

    cluster.annotations["cloud.phala.com/approved-compose-hash"] = "0x" + "00" * 32  # another hash
    await _run(Reconciler(cloud, chain), cluster)
    assert chain.broadcasts == Counter()

    cluster.annotations["cloud.phala.com/approved-compose-hash"] = wanted.upper().replace("0X", "0x")
    await _run(Reconciler(cloud, chain), cluster)
    assert cluster.status["phase"] == "Synced"
    assert chain.broadcasts == Counter({wanted: 1})


async def test_without_signer_waits_for_an_outside_transaction() -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar()
    spec = _spec(on_chain=True)
    del spec["onChain"]["signerKeySecretRef"]
    cluster = FakeCluster(spec)
    await _run(Reconciler(cloud, chain), cluster)
    assert _ready(cluster)["reason"] == "AwaitingTransaction"

    cluster.annotations["cloud.phala.com/transaction-hash"] = "0x" + "77" * 32
    await _run(Reconciler(cloud, chain), cluster)
    assert chain.verified == ["0x" + "77" * 32]
    assert cluster.status["phase"] == "Synced"
    assert cluster.status["transactionHash"] == "0x" + "77" * 32
    assert chain.broadcasts == Counter()


async def test_transient_failure_backs_off_and_counts_attempts() -> None:
    cloud, chain = (
        FakeCloud(on_chain=True),
        FakeRegistrar(failure=RetryLater("rpc down", reason=Reason.CHAIN_UNAVAILABLE)),
    )
    cluster = FakeCluster(_spec(on_chain=True))
    reconciler = Reconciler(cloud, chain)
    outcome = await reconciler.reconcile(cluster.snapshot(), cluster.io())
    outcome = await reconciler.reconcile(cluster.snapshot(), cluster.io())
    assert outcome.requeue_after is not None and 0 < outcome.requeue_after <= 2
    assert cluster.status["failures"] == 1
    assert _ready(cluster)["reason"] == "ChainUnavailable"
    assert "nextRetryTime" in cluster.status
    # Before the retry time nothing is called again, even by a new operator process.
    calls = len(cloud.calls)
    again = await Reconciler(cloud, chain).reconcile(cluster.snapshot(), cluster.io())
    assert again.requeue_after is not None and len(cloud.calls) == calls


async def test_466_starts_over_and_467_rechecks() -> None:
    cloud = FakeCloud(on_chain=True, phase2_answers=[StartOver("superseded", status_code=466)])
    chain = FakeRegistrar()
    cluster = FakeCluster(_spec(on_chain=True))
    await _run(Reconciler(cloud, chain), cluster)
    assert cluster.status["phase"] == "Synced"
    assert cloud.phase1_calls == 2 and cloud.phase2_calls == 2

    cloud2 = FakeCloud(on_chain=True, phase2_answers=[RecheckChain("no receipt", status_code=467)])
    cluster2 = FakeCluster(_spec(on_chain=True))
    reconciler = Reconciler(cloud2, FakeRegistrar())
    outcome = await reconciler.reconcile(cluster2.snapshot(), cluster2.io())
    assert outcome.requeue_after is not None
    assert cluster2.status["inFlight"]["phase2Attempts"] == 1
    cluster2.status.pop("nextRetryTime")
    await _run(reconciler, cluster2)
    assert cluster2.status["phase"] == "Synced"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c.spec["scriptRef"].update(name="missing"), "ConfigMapNotFound"),
        (lambda c: c.secrets.pop("api"), "SecretNotFound"),
    ],
)
async def test_missing_inputs_stall_with_their_reason(change: Any, reason: str) -> None:
    cluster = FakeCluster(_spec())
    change(cluster)
    await _run(Reconciler(FakeCloud(), FakeRegistrar()), cluster)
    assert cluster.status["phase"] == "Failed"
    assert _ready(cluster)["reason"] == reason


async def test_operation_failure_is_apply_failed() -> None:
    cloud = FakeCloud(operation_failure="image pull failed")
    cluster = FakeCluster(_spec())
    await _run(Reconciler(cloud, FakeRegistrar()), cluster)
    assert _ready(cluster)["reason"] == "ApplyFailed"
    assert "image pull failed" in cluster.status["message"]


async def test_suspend_makes_no_remote_call() -> None:
    cloud = FakeCloud()
    cluster = FakeCluster(_spec(suspend=True))
    await _run(Reconciler(cloud, FakeRegistrar()), cluster)
    assert cluster.status["phase"] == "Suspended"
    assert cloud.calls == []


async def test_requested_at_forces_a_full_sync() -> None:
    cloud = FakeCloud()
    cluster = FakeCluster(_spec())
    await _run(Reconciler(cloud, FakeRegistrar()), cluster)
    cluster.annotations["cloud.phala.com/requested-at"] = "2026-11-27T10:00:00Z"
    await _run(Reconciler(cloud, FakeRegistrar()), cluster)
    assert cloud.phase1_calls == 2
    assert cluster.status["lastHandledRequestedAt"] == "2026-11-27T10:00:00Z"


@pytest.mark.parametrize(
    ("policy", "phase1_calls", "reason"), [("Correct", 2, "Synced"), ("Report", 1, "Drifted")]
)
async def test_drift_policy(policy: str, phase1_calls: int, reason: str) -> None:
    cloud = FakeCloud()
    cluster = FakeCluster(_spec(driftPolicy=policy, driftCheckInterval="1s"))
    clock = [1_800_000_000.0]
    reconciler = Reconciler(cloud, FakeRegistrar(), clock=lambda: clock[0])
    await _run(reconciler, cluster)
    cloud.script = "echo tampered"
    clock[0] += 5
    await _run(reconciler, cluster)
    assert cloud.phase1_calls == phase1_calls
    assert _ready(cluster)["reason"] == reason


async def test_concurrent_change_refuses_the_write() -> None:
    cluster = FakeCluster(_spec())
    snapshot = cluster.snapshot()
    io = cluster.io()
    cluster.rv += 1  # someone edited the resource after our read
    with pytest.raises(StatusConflict):
        await Reconciler(FakeCloud(), FakeRegistrar()).reconcile(snapshot, io)


async def test_secrets_never_reach_status_or_events() -> None:
    cloud, chain = FakeCloud(on_chain=True), FakeRegistrar()
    cluster = FakeCluster(_spec(on_chain=True))
    await _run(Reconciler(cloud, chain), cluster)
    text = json.dumps(cluster.status) + json.dumps(cluster.events)
    assert API_KEY not in text
    assert SIGNER.removeprefix("0x") not in text
