"""In-memory fakes of the reconcile core's ports that misbehave on purpose: Phala Cloud, a chain with a
mempool, blocks, reorgs and fee changes, and the resource store with resourceVersion conflicts.

They keep a record of everything sent (``sent_patches``, ``broadcasts``) so the model test can check
its invariants against what actually reached the remote sides. A ``Crash`` (a ``BaseException``, so
nothing in the core catches it) can be armed to fire at the n-th remote call or status write.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cvm_prelaunch_operator.domain.chain import (
    COMPOSE_HASH_ADDED_TOPIC,
    OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR,
    Head,
    LogEntry,
    LogRef,
    Receipt,
    SendResult,
    SignedTx,
    Survey,
    Tracking,
    TxView,
    UnsignedTx,
    compose_hash_of_calldata,
    hex32,
)
from cvm_prelaunch_operator.domain.compose_hash import app_compose_with_script, compose_hash
from cvm_prelaunch_operator.domain.errors import (
    Permanent,
    RecheckChain,
    RegistrationRequired,
    RetryLater,
    StartOver,
)
from cvm_prelaunch_operator.domain.models import ComposeHashChallenge, CvmInfo, Operation, UpdateAccepted
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import ResourceSnapshot
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.reconcile.ports import ScriptSource, StatusConflict

GWEI = 10**9


class Crash(BaseException):
    """The operator process dies here."""


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class CrashSwitch:
    """Counts remote calls and status writes; raises ``Crash`` at the armed count."""

    def __init__(self) -> None:
        self.calls = 0
        self.at: int | None = None

    def tick(self, what: str) -> None:
        self.calls += 1
        if self.at is not None and self.calls >= self.at:
            self.at = None
            raise Crash(what)


# -- the chain ----------------------------------------------------------------------------------------


_BLOCK_SEQ = itertools.count()


def _sha(data: str) -> str:
    return "0x" + hashlib.sha256(data.encode()).hexdigest()


def address_of(key: str) -> str:
    return "0x" + hashlib.sha256(("addr:" + key).encode()).hexdigest()[:40]


@dataclass
class FakeTx:
    tx_hash: str
    raw: str
    sender: str
    nonce: int
    to: str
    data: str
    gas: int
    max_fee: int
    tip: int | None


def decode_raw(raw: str) -> dict[str, Any]:
    return json.loads(bytes.fromhex(raw.removeprefix("0x")).decode())  # type: ignore[no-any-return]


class FakeSigner:
    """Signs by serialising the fields; the hash is sha256 of the bytes (consistent, like keccak)."""

    def address(self, key: Secret) -> str:
        text = key.reveal()
        if not text.startswith("key-"):
            raise Permanent("the signer key is not a valid secp256k1 private key", reason=Reason.INVALID_SPEC)
        return address_of(text)

    def sign(self, key: Secret, tx: UnsignedTx) -> SignedTx:
        sender = self.address(key)
        body = {
            "chainId": tx.chain_id,
            "nonce": tx.nonce,
            "to": tx.to,
            "data": tx.data,
            "gas": tx.gas,
            "maxFee": tx.fees.max_fee_per_gas,
            "tip": tx.fees.max_priority_fee_per_gas,
            "from": sender,
        }
        raw = "0x" + json.dumps(body, sort_keys=True).encode().hex()
        return SignedTx(
            tx_hash=self.tx_hash(raw), raw=raw, sender=sender, nonce=tx.nonce, gas=tx.gas, fees=tx.fees
        )

    def tx_hash(self, raw: str) -> str:
        return _sha("tx:" + raw)


@dataclass
class Contract:
    owner: str
    allowed: set[str] = field(default_factory=set)
    any_device: bool = True
    devices: set[str] = field(default_factory=set)
    initial: frozenset[str] = frozenset()  # allowed before the chain's first block (kept across reorgs)


@dataclass
class Block:
    number: int
    hash: str
    timestamp: int
    base_fee: int
    txs: list[str]


@dataclass
class SendRecord:
    """One broadcast that reached the chain's node, with what the spec named at that moment."""

    tx_hash: str
    sender: str
    nonce: int
    to: str
    chain_id: int
    first_of_nonce: bool  # no transaction of this sender with this nonce was sent before


class FakeChain:
    """A chain with one node: mempool, blocks, base fee, reorgs, drops, other senders."""

    def __init__(self, chain_id: int, clock: Clock, crash: CrashSwitch, *, block_time: float = 0.0) -> None:
        self.chain_id = chain_id
        self.clock = clock
        self.crash = crash
        self.block_time = block_time  # 0: automine
        self.blocks: list[Block] = [Block(0, _sha(f"genesis-{chain_id}"), int(clock.now), GWEI, [])]
        self.known: dict[str, FakeTx] = {}  # every transaction the node was given
        self.mempool: dict[str, FakeTx] = {}
        self.receipts: dict[str, Receipt] = {}
        self.contracts: dict[str, Contract] = {}
        self.balances: dict[str, int] = {}
        self.base_fee = GWEI
        self.next_base_fee: int | None = None
        self.down = 0  # the next n calls fail as unreachable
        self.rate_limited = 0  # the next n calls answer 429
        self.sends: list[SendRecord] = []
        self.seen_nonces: set[tuple[str, int]] = set()
        self.reverts: list[str] = []
        self.last_mined_at = clock.now
        self.wrong_chain_id: int | None = None
        self.gas_estimate = 60_000
        # The next n tracking rounds read the head one block behind their receipts (a node that
        # serves the block before the receipt of a transaction it has just mined).
        self.head_behind_receipts = 0
        # anvil evicts a pending transaction priced out by the base fee and refuses new ones below it;
        # geth keeps them pending. Both are played.
        self.evicts_underpriced = False

    # -- world -------------------------------------------------------------------------------------

    @property
    def head(self) -> Block:
        return self.blocks[-1]

    def nonce_of(self, address: str, *, pending: bool = False) -> int:
        mined = 0
        for block in self.blocks:
            for tx_hash in block.txs:
                tx = self.known[tx_hash]
                if tx.sender.lower() == address.lower():
                    mined = max(mined, tx.nonce + 1)
        if not pending:
            return mined
        nonce = mined
        while any(t.sender.lower() == address.lower() and t.nonce == nonce for t in self.mempool.values()):
            nonce += 1
        return nonce

    def advance(self) -> None:
        """Mine the blocks the clock says are due (interval mining)."""
        if self.block_time <= 0:
            return
        while self.clock.now - self.last_mined_at >= self.block_time:
            self.last_mined_at += self.block_time
            self.mine(timestamp=int(self.last_mined_at))

    def mine(self, timestamp: int | None = None) -> Block:
        base_fee = self.next_base_fee if self.next_base_fee is not None else self.base_fee
        self.next_base_fee = None
        self.base_fee = base_fee
        number = self.head.number + 1
        block = Block(
            number,
            _sha(f"{self.chain_id}-{number}-{next(_BLOCK_SEQ)}"),
            timestamp or int(self.clock.now),
            base_fee,
            [],
        )
        included: list[str] = []
        progressed = True
        while progressed:
            progressed = False
            for tx in sorted(self.mempool.values(), key=lambda t: (t.sender, t.nonce, -t.max_fee)):
                if tx.tx_hash not in self.mempool:
                    continue
                if tx.nonce != self._nonce_with(tx.sender, included) or tx.max_fee < base_fee:
                    continue
                self._execute(tx, block)
                included.append(tx.tx_hash)
                # Any other transaction of the sender with this nonce can never be mined now.
                for other in list(self.mempool.values()):
                    if other.sender == tx.sender and other.nonce == tx.nonce:
                        del self.mempool[other.tx_hash]
                progressed = True
        block.txs = included
        self.blocks.append(block)
        if self.evicts_underpriced:
            for tx in list(self.mempool.values()):
                if tx.max_fee < base_fee:
                    del self.mempool[tx.tx_hash]
        return block

    def _nonce_with(self, sender: str, included: list[str]) -> int:
        nonce = self.nonce_of(sender)
        for tx_hash in included:
            if self.known[tx_hash].sender == sender:
                nonce = max(nonce, self.known[tx_hash].nonce + 1)
        return nonce

    def _execute(self, tx: FakeTx, block: Block) -> None:
        contract = self.contracts.get(tx.to.lower())
        if contract is None and tx.data in ("", "0x"):
            # A plain transfer (a nonce gap filler): succeeds, logs nothing.
            self.receipts[tx.tx_hash] = Receipt(
                tx_hash=tx.tx_hash, block_number=block.number, block_hash=block.hash, succeeded=True, to=tx.to
            )
            return
        hash_ = compose_hash_of_calldata(tx.data)
        ok = contract is not None and hash_ is not None and contract.owner.lower() == tx.sender.lower()
        logs: tuple[LogEntry, ...] = ()
        if ok:
            assert contract is not None and hash_ is not None
            contract.allowed.add(hash_)
            logs = (LogEntry(address=tx.to, topics=(COMPOSE_HASH_ADDED_TOPIC,), data=hash_),)
        else:
            self.reverts.append(tx.tx_hash)
        self.receipts[tx.tx_hash] = Receipt(
            tx_hash=tx.tx_hash,
            block_number=block.number,
            block_hash=block.hash,
            succeeded=ok,
            to=tx.to,
            logs=logs,
        )

    def reorg(self, depth: int, *, drop: bool = False) -> None:
        """The last ``depth`` blocks leave the canonical chain; their transactions return to the pool
        (or are lost, ``drop``). Contract state is recomputed from the remaining blocks."""
        depth = min(depth, len(self.blocks) - 1)
        if depth <= 0:
            return
        removed = self.blocks[-depth:]
        self.blocks = self.blocks[:-depth]
        for block in removed:
            for tx_hash in block.txs:
                self.receipts.pop(tx_hash, None)
                if not drop:
                    self.mempool[tx_hash] = self.known[tx_hash]
        self._recompute()

    def _recompute(self) -> None:
        for contract in self.contracts.values():
            contract.allowed = set(contract.initial)
        for block in self.blocks:
            for tx_hash in block.txs:
                receipt = self.receipts.get(tx_hash)
                if receipt is not None and receipt.succeeded:
                    for log in receipt.logs:
                        self.contracts[log.address.lower()].allowed.add(log.data)

    def drop(self, tx_hash: str | None = None) -> None:
        if tx_hash is None:
            self.mempool.clear()
        else:
            self.mempool.pop(tx_hash, None)

    def foreign_send(
        self, sender: str, nonce: int, *, to: str = "0x" + "99" * 20, data: str = "0x"
    ) -> FakeTx:
        """A transaction of another program using the same key (or of another key)."""
        tx_hash = _sha(f"foreign-{sender}-{nonce}-{len(self.known)}")
        tx = FakeTx(tx_hash, "0x" + tx_hash[2:], sender, nonce, to, data, 21_000, 10**6 * GWEI, GWEI)
        self.known[tx_hash] = tx
        self.mempool[tx_hash] = tx
        if self.block_time <= 0:
            self.mine()
        return tx

    def logs_of(self, contract: str, compose_hash: str) -> list[Receipt]:
        return [
            r for r in self.receipts.values() if r.succeeded and r.logs_compose_hash(contract, compose_hash)
        ]

    # -- the port --------------------------------------------------------------------------------

    def _call(self, what: str) -> None:
        self.crash.tick(f"chain {what}")
        self.advance()
        if self.down > 0:
            self.down -= 1
            raise RetryLater(
                f"chain RPC http://rpc unreachable while {what}", reason=Reason.CHAIN_UNAVAILABLE
            )
        if self.rate_limited > 0:
            self.rate_limited -= 1
            raise RetryLater(
                f"chain RPC http://rpc answered HTTP 429 while {what}",
                reason=Reason.CHAIN_UNAVAILABLE,
                retry_after=4.0,
            )

    def _head(self) -> Head:
        head = self.head
        return Head(
            number=head.number,
            hash=head.hash,
            timestamp=head.timestamp,
            base_fee=self.next_base_fee or head.base_fee,
        )

    @property
    def reported_chain_id(self) -> int:
        return self.wrong_chain_id or self.chain_id

    async def survey(
        self, *, contract: str, compose_hash: str, device_id: str | None, signer: str, call_data: str
    ) -> Survey:
        self._call("survey")
        c = self.contracts.get(contract.lower())
        owner = c.owner if c else "0x" + "00" * 20
        estimate: int | None = self.gas_estimate
        revert: str | None = None
        if c is None or c.owner.lower() != signer.lower():
            estimate = None
            revert = OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR + signer.lower().removeprefix("0x").rjust(64, "0")
        return Survey(
            chain_id=self.reported_chain_id,
            head=self._head(),
            owner=owner,
            hash_allowed=bool(c and hex32(compose_hash) in c.allowed),
            any_device_allowed=bool(c and c.any_device),
            device_allowed=(bool(c and device_id in c.devices) if device_id else None),
            signer_balance=self.balances.get(signer.lower(), 10**18),
            pending_nonce=self.nonce_of(signer, pending=True),
            mined_nonce=self.nonce_of(signer),
            gas_estimate=estimate,
            estimate_revert=revert,
            priority_fee=GWEI,
            gas_price=None,
        )

    async def send(self, raw: str) -> SendResult:
        self._call("send")
        body = decode_raw(raw)
        tx_hash = FakeSigner().tx_hash(raw)
        tx = FakeTx(
            tx_hash,
            raw,
            body["from"],
            body["nonce"],
            body["to"],
            body["data"],
            body["gas"],
            body["maxFee"],
            body["tip"],
        )
        key = (tx.sender.lower(), tx.nonce)
        self.sends.append(
            SendRecord(tx_hash, tx.sender, tx.nonce, tx.to, body["chainId"], key not in self.seen_nonces)
        )
        self.seen_nonces.add(key)
        if tx_hash in self.receipts or tx_hash in self.mempool:
            return SendResult.KNOWN
        if tx.nonce < self.nonce_of(tx.sender):
            return SendResult.NONCE_TOO_LOW
        if self.evicts_underpriced and tx.max_fee < (self.next_base_fee or self.base_fee):
            return SendResult.UNDERPRICED
        rival = next(
            (t for t in self.mempool.values() if t.sender == tx.sender and t.nonce == tx.nonce), None
        )
        if rival is not None:
            bumped = tx.max_fee * 10 >= rival.max_fee * 11 and (tx.tip or 0) * 10 >= (rival.tip or 0) * 11
            if not bumped:
                return SendResult.REPLACEMENT_UNDERPRICED
            del self.mempool[rival.tx_hash]
        self.known[tx_hash] = tx
        self.mempool[tx_hash] = tx
        if self.block_time <= 0:
            self.mine()
        return SendResult.ACCEPTED

    async def track(self, tx_hashes: Sequence[str], *, sender: str | None) -> Tracking:
        self._call("track")
        receipts = {h: self.receipts.get(h) for h in tx_hashes}
        views: dict[str, TxView | None] = {}
        for h in tx_hashes:
            tx = self.known.get(h)
            known = tx is not None and (h in self.mempool or h in self.receipts)
            views[h] = (
                TxView(
                    tx_hash=h,
                    sender=tx.sender,
                    to=tx.to,
                    nonce=tx.nonce,
                    input=tx.data,
                    block_number=self.receipts[h].block_number if h in self.receipts else None,
                )
                if known and tx is not None
                else None
            )
        head = self._head()
        if self.head_behind_receipts and len(self.blocks) > 1:
            self.head_behind_receipts -= 1
            parent = self.blocks[-2]
            head = Head(
                number=parent.number, hash=parent.hash, timestamp=parent.timestamp, base_fee=head.base_fee
            )
        return Tracking(
            chain_id=self.reported_chain_id,
            head=head,
            mined_nonce=self.nonce_of(sender) if sender else None,
            receipts=receipts,
            transactions=views,
            pending_nonce=self.nonce_of(sender, pending=True) if sender else None,
        )

    async def compose_hash_logs(
        self, *, contract: str, compose_hash: str, from_block: int, to_block: int
    ) -> Sequence[LogRef]:
        self._call("logs")
        return [
            LogRef(r.tx_hash, r.block_number, r.block_hash)
            for r in self.logs_of(contract, compose_hash)
            if from_block <= r.block_number <= to_block
        ]

    async def replay(self, *, sender: str, to: str, data: str, block_number: int) -> str | None:
        self._call("replay")
        c = self.contracts.get(to.lower())
        if c is None or c.owner.lower() != sender.lower():
            return OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR + sender.lower().removeprefix("0x").rjust(64, "0")
        return None

    async def block_timestamp(self, number: int) -> int:
        self._call("block")
        return self.blocks[min(number, len(self.blocks) - 1)].timestamp


class FakeChains:
    """ChainConnector: RPC URLs map to chains (``http://rpc-<chain id>``)."""

    def __init__(self) -> None:
        self.by_url: dict[str, FakeChain] = {}
        self.connected: list[str] = []

    def connect(self, rpc_url: Secret) -> FakeChain:
        url = rpc_url.reveal()
        self.connected.append(url)
        chain = self.by_url.get(url)
        if chain is None:
            raise AssertionError(f"no fake chain serves {url}")
        return chain


# -- Phala Cloud ------------------------------------------------------------------------------------

API_KEY = "phak_model_test_key_0123456789"


def compose_text(script: str) -> str:
    compose: dict[str, Any] = {
        "docker_compose_file": "services: {}",
        "runner": "docker-compose",
        "name": "app",
    }
    if script:
        compose["pre_launch_script"] = script
    return json.dumps(compose, sort_keys=True, indent=4, separators=(",", ":"))


@dataclass
class FakeOperation:
    correlation_id: str
    script: str
    started: float
    duration: float
    outcome: str  # completed | failed | hang | weird
    done: bool = False


@dataclass
class FakeCvm:
    id: str
    script: str
    chain: FakeChain | None = None
    contract: str | None = None
    device: str = "dd" * 32
    phase1: tuple[bytes, str] | None = None  # (script, compose hash) cached for Phase 2
    operations: list[FakeOperation] = field(default_factory=list)

    @property
    def compose_hash(self) -> str:
        return hashlib.sha256(compose_text(self.script).encode()).hexdigest()

    def hash_for(self, script: bytes) -> str:
        return compose_hash(app_compose_with_script(compose_text(self.script), script))

    @property
    def running(self) -> FakeOperation | None:
        return next((o for o in self.operations if not o.done), None)


@dataclass
class PatchRecord:
    cvm_id: str
    script: bytes
    phase2: bool
    status: int
    compose_hash: str | None = None
    transaction_hash: str | None = None


class FakeCloud:
    """Phala Cloud with CVMs, the two-phase update, operations and injectable faults."""

    def __init__(self, clock: Clock, crash: CrashSwitch) -> None:
        self.clock = clock
        self.crash = crash
        self.cvms: dict[str, FakeCvm] = {}
        self.correlations = itertools.count(1)
        self.faults: list[tuple[str, Exception]] = []  # (endpoint, error) taken in order
        self.patches: list[PatchRecord] = []
        self.operation_seconds = 0.0
        self.operation_outcome = "completed"
        self.hash_form = "0x"  # how 465 spells the hash: "0x" or "" (bare), "legacy"
        self.next_phase2: list[Exception] = []

    def for_api_key(self, api_key: Secret) -> FakeCloud:
        if api_key.reveal() != API_KEY:
            raise AssertionError("unexpected API key")
        return self

    def _call(self, endpoint: str) -> None:
        self.crash.tick(f"cloud {endpoint}")
        self._settle()
        for i, (ep, error) in enumerate(self.faults):
            if ep in (endpoint, "*"):
                del self.faults[i]
                raise error

    def _settle(self) -> None:
        for cvm in self.cvms.values():
            for op in cvm.operations:
                if op.done or op.outcome in ("hang", "weird"):
                    continue
                if self.clock.now - op.started >= op.duration:
                    op.done = True
                    if op.outcome == "completed":
                        cvm.script = op.script

    def _cvm(self, cvm_id: str) -> FakeCvm:
        cvm = self.cvms.get(cvm_id)
        if cvm is None:
            raise Permanent(
                f"GET /cvms/{cvm_id}: CVM not found", reason=Reason.CVM_NOT_FOUND, status_code=404
            )
        return cvm

    async def get_cvm(self, cvm_id: str) -> CvmInfo:
        self._call("get_cvm")
        cvm = self._cvm(cvm_id)
        running = cvm.running
        return CvmInfo(
            id=cvm.id,
            name=cvm.id,
            app_id=(cvm.contract or "0x" + "12" * 20).removeprefix("0x"),
            vm_uuid=None,
            status="running",
            in_progress=running is not None,
            compose_hash=cvm.compose_hash,
            pre_launch_script_hash=hashlib.sha256(cvm.script.encode()).hexdigest(),
            kms_type="base" if cvm.chain else "phala",
            chain_id=cvm.chain.chain_id if cvm.chain else None,
            app_contract=cvm.contract,
            progress_correlation_id=running.correlation_id if running else None,
        )

    async def get_pre_launch_script(self, cvm_id: str) -> str:
        self._call("get_script")
        return self._cvm(cvm_id).script

    async def get_app_compose(self, cvm_id: str) -> str:
        self._call("app_compose")
        return compose_text(self._cvm(cvm_id).script)

    async def patch_pre_launch_script(
        self,
        cvm_id: str,
        script: bytes,
        *,
        compose_hash: str | None = None,
        transaction_hash: str | None = None,
    ) -> UpdateAccepted:
        endpoint = "phase2" if compose_hash else "phase1"
        self.crash.tick(f"cloud {endpoint}")
        self._settle()
        cvm = self._cvm(cvm_id)
        record = PatchRecord(cvm_id, script, compose_hash is not None, 0, compose_hash, transaction_hash)
        self.patches.append(record)
        for i, (ep, error) in enumerate(self.faults):
            if ep in (endpoint, "*"):
                del self.faults[i]
                record.status = getattr(error, "status_code", None) or 500
                raise error
        if cvm.running is not None:
            record.status = 409
            raise RetryLater("another operation is in progress", status_code=409)
        if compose_hash is None:
            if cvm.chain is not None:
                claimed = cvm.hash_for(script)
                cvm.phase1 = (script, claimed)
                record.status = 465
                shown = claimed if self.hash_form == "" else "0x" + claimed
                raise RegistrationRequired(
                    "register",
                    challenge=ComposeHashChallenge(
                        shown, (cvm.contract or "").removeprefix("0x"), cvm.device, cvm.chain.chain_id, {}
                    ),
                    status_code=465,
                )
            return self._start(cvm, script, record)
        if self.next_phase2:
            error = self.next_phase2.pop(0)
            record.status = 466 if isinstance(error, StartOver) else 467
            raise error
        if cvm.phase1 is None or cvm.phase1[0] != script:
            record.status = 466
            raise StartOver("the compose hash is unknown or superseded", status_code=466)
        expected = cvm.phase1[1]
        if compose_hash.lower().removeprefix("0x") != expected:
            record.status = 466
            raise StartOver("compose hash differs from Phase 1", status_code=466)
        assert cvm.chain is not None and cvm.contract is not None and transaction_hash is not None
        receipt = cvm.chain.receipts.get(transaction_hash)
        if receipt is None or not receipt.logs_compose_hash(cvm.contract, "0x" + expected):
            record.status = 467
            raise RecheckChain("cannot verify the registration transaction", status_code=467)
        if "0x" + expected not in cvm.chain.contracts[cvm.contract.lower()].allowed:
            record.status = 468
            raise Permanent("not allowed", reason=Reason.COMPOSE_HASH_NOT_ALLOWED, status_code=468)
        cvm.phase1 = None
        return self._start(cvm, script, record)

    def _start(self, cvm: FakeCvm, script: bytes, record: PatchRecord) -> UpdateAccepted:
        record.status = 202
        op = FakeOperation(
            correlation_id=f"corr-{next(self.correlations)}",
            script=script.decode(),
            started=self.clock.now,
            duration=self.operation_seconds,
            outcome=self.operation_outcome,
        )
        cvm.operations.append(op)
        self._settle()
        return UpdateAccepted(correlation_id=op.correlation_id, status="in_progress", message="accepted")

    async def find_operation(self, cvm_id: str, correlation_id: str) -> Operation | None:
        self._call("operations")
        for op in self._cvm(cvm_id).operations:
            if op.correlation_id == correlation_id:
                if not op.done:
                    word = "reticulating" if op.outcome == "weird" else "in_progress"
                    return Operation(correlation_id, "update", "in_progress", reported_status=word)
                if op.outcome == "failed":
                    return Operation(
                        correlation_id,
                        "update",
                        "failed",
                        error_message="boot failed",
                        reported_status="failed",
                    )
                return Operation(correlation_id, "update", "completed", reported_status="completed")
        return None


# -- the resource store ---------------------------------------------------------------------------


@dataclass
class Store:
    """One CvmPreLaunchScript with its ConfigMap and Secrets; what the API server would hold."""

    crash: CrashSwitch
    spec: dict[str, Any]
    script: str = "#!/bin/sh\necho v1\n"
    annotations: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    rv: int = 1
    configmap_rv: int = 1
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    secret_rvs: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    writes: int = 0
    conflict_next: int = 0  # the next n status writes meet a conflicting change
    on_write: Callable[[dict[str, Any]], None] | None = None

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

    def io(self) -> StoreIO:
        return StoreIO(self, str(self.rv))

    def edit_spec(self, change: Callable[[dict[str, Any]], None]) -> None:
        change(self.spec)
        self.generation += 1
        self.rv += 1

    def annotate(self, key: str, value: str | None) -> None:
        if value is None:
            self.annotations.pop(key, None)
        else:
            self.annotations[key] = value
        self.rv += 1

    def edit_script(self, script: str) -> None:
        self.script = script
        self.configmap_rv += 1

    def set_secret(self, name: str, key: str, value: str) -> None:
        self.secrets.setdefault(name, {})[key] = value
        self.secret_rvs[name] = self.secret_rvs.get(name, 0) + 1


@dataclass
class StoreIO:
    store: Store
    rv: str

    async def read_script(self, config_map: str, key: str) -> ScriptSource:
        if config_map != "scripts":
            raise Permanent(f"ConfigMap ns/{config_map} not found", reason=Reason.CONFIGMAP_NOT_FOUND)
        return ScriptSource(self.store.script.encode(), config_map, "cm-uid", str(self.store.configmap_rv))

    async def read_secret(self, name: str, key: str) -> Secret:
        try:
            return Secret(self.store.secrets[name][key])
        except KeyError:
            raise Permanent(f"Secret ns/{name} not found", reason=Reason.SECRET_NOT_FOUND) from None

    async def secret_version(self, name: str) -> str | None:
        rv = self.store.secret_rvs.get(name)
        return None if rv is None else str(rv)

    async def patch_status(self, patch: dict[str, object]) -> None:
        self.store.crash.tick("status write")
        if self.store.conflict_next > 0:
            self.store.conflict_next -= 1
            self.store.rv += 1  # someone else wrote in between
        if self.rv != str(self.store.rv):
            raise StatusConflict("changed")
        for key, value in patch.items():
            if value is None:
                self.store.status.pop(key, None)
            else:
                self.store.status[key] = copy.deepcopy(value)
        self.store.rv += 1
        self.store.writes += 1
        self.rv = str(self.store.rv)
        if self.store.on_write is not None:
            self.store.on_write(dict(patch))

    async def record_event(self, type_: str, reason: str, message: str) -> None:
        self.store.events.append((type_, reason, message))
