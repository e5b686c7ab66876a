"""Registers compose hashes on a dstack app contract (``addComposeHash``) with web3.py, exactly once.

Checks before sending
    The RPC's chain id must be the CVM's, the signer must be ``owner()``, its balance must cover
    ``gas limit × max fee``, and when the 465 named a device that the contract does not allow (and
    ``allowAnyDevice()`` is false) the registration stops with ``DeviceNotAllowed``: a CVM on that
    device would not boot. Adding a device is a separate decision the operator never takes on its
    own; :meth:`Web3Registrar.add_device` exists for whoever takes it explicitly.

Exactly once under crashes
    Every transaction is signed locally and handed to the caller's ``persist`` as a
    ``PendingTransaction`` (chain, sender, nonce, transaction hash, signed bytes) before
    ``eth_sendRawTransaction``; if ``persist`` raises, nothing is sent. Given such a record after a
    crash (``resume_from``), the registrar finishes it instead of signing anew:

    1. the transaction has a receipt: wait for the confirmations and check it;
    2. otherwise the sender's *mined* nonce is read, and only then the receipt again: if the nonce
       moved past the record's and our transaction still has no receipt, that nonce was used by
       another transaction (ours was replaced or dropped), and only then is a fresh transaction
       signed (and persisted first, again);
    3. otherwise the very same signed bytes are broadcast again (a node that has them says so,
       which is fine) and waited for.

    Two transactions with one nonce can never both be mined, so re-sending the same bytes can
    never register twice.

Already allowed
    When ``allowedComposeHashes(hash)`` is already true and the request names an earlier
    transaction (``known_tx_hash``) that verifies (succeeded, sent to the contract, logs
    ``ComposeHashAdded(hash)``), that registration is reused: nothing is spent and
    ``Registration.reused`` is true. Otherwise a new ``addComposeHash`` is sent even though the hash
    is allowed, because Phala's Phase 2 needs a transaction whose receipt carries the log (the
    official CLI always sends one too).

One nonce stream per signer
    One ``asyncio.Lock`` per (chain id, signer address) in the process is held from reading the
    nonce through the broadcast, not while waiting for confirmations. The next transaction reads
    the signer's *pending* nonce from the node, which by then counts the previous one. Should the
    node not count it (a load-balanced RPC, a transaction dropped from its pool), the resulting
    nonce conflict is resolved by the resume rules above, never by a second registration.

Failures
    ``WrongChain``, ``NotContractOwner`` (also the revert ``0x118cdaa7``), ``InsufficientFunds``,
    ``DeviceNotAllowed`` and ``TransactionFailed`` (reverted, or no ``ComposeHashAdded`` for the
    hash) are ``Permanent``; a transport failure, a timeout, an HTTP 429/5xx or an unconfirmed
    transaction at the end of the bounded wait are ``RetryLater`` with ``ChainUnavailable``, and
    the pending record stays valid for a resume. Every message names the RPC by its redacted URL;
    nothing a library raised is chained to the errors raised here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import TxParams, TxReceipt, Wei

from cvm_prelaunch_operator.chain.abi import COMPOSE_HASH_ADDED_TOPIC, DEVICE_ADDED_TOPIC, DSTACK_APP_ABI
from cvm_prelaunch_operator.chain.failures import Rejection, classify_rejection, node_message, translate
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.models import PendingTransaction, Registration
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Redactor, Secret, redact_url
from cvm_prelaunch_operator.reconcile.ports import ChainTarget, PersistPending, RegistrationRequest

logger = logging.getLogger(__name__)

T = TypeVar("T")

_GWEI: Final = 10**9
# Tip used when a node does not implement eth_maxPriorityFeePerGas.
_FALLBACK_PRIORITY_FEE: Final = 1 * _GWEI
_WEI_PER_ETH: Final = 10**18


@dataclass(frozen=True)
class RegistrarSettings:
    """Timing and fee knobs. The defaults suit public RPCs and anvil alike."""

    poll_interval: float = 0.2  # receipt polling; automined chains answer on the first poll
    receipt_timeout: float = 120.0  # bound of one register/verify wait; then RetryLater
    request_timeout: float = 10.0  # one JSON-RPC request
    rpc_failure_grace: float = 2.0  # how long a wait tolerates an unreachable RPC before giving up
    rebroadcast_interval: float = 15.0  # re-send the same bytes while a transaction stays unmined
    gas_margin: float = 1.25  # gas limit = estimate x margin
    max_fresh_attempts: int = 3  # fresh transactions after nonces taken by others, per call


@dataclass(frozen=True)
class Preflight:
    """What the chain says about a registration before anything is signed.

    Fields past ``signer`` are ``None`` when the RPC serves another chain (nothing there is
    meaningful) and ``estimated_gas``/``required_wei`` also when the signer is not the owner
    (the estimate reverts).
    """

    rpc_chain_id: int
    expected_chain_id: int
    app_contract: str
    signer: str
    owner: str | None = None
    balance_wei: int | None = None
    estimated_gas: int | None = None
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None  # None on chains without EIP-1559
    device_id: str | None = None
    any_device_allowed: bool | None = None
    device_allowed: bool | None = None  # None when no device id was given
    hash_allowed: bool | None = None

    @property
    def chain_ok(self) -> bool:
        return self.rpc_chain_id == self.expected_chain_id

    @property
    def signer_is_owner(self) -> bool:
        return self.owner is not None and self.owner.lower() == self.signer.lower()

    @property
    def required_wei(self) -> int | None:
        if self.estimated_gas is None or self.max_fee_per_gas is None:
            return None
        return self.estimated_gas * self.max_fee_per_gas

    @property
    def funded(self) -> bool:
        required = self.required_wei
        return required is not None and self.balance_wei is not None and self.balance_wei >= required

    @property
    def device_ok(self) -> bool:
        """False only when a named device is known not to be allowed."""
        return bool(self.any_device_allowed) or self.device_allowed is not False

    def problems(self) -> list[SyncError]:
        """Every reason not to send, most fundamental first; empty when sending may go ahead."""
        if not self.chain_ok:
            return [
                Permanent(
                    f"the chain RPC serves chain {self.rpc_chain_id}, but the CVM's app contract "
                    f"{self.app_contract} lives on chain {self.expected_chain_id}",
                    reason=Reason.WRONG_CHAIN,
                )
            ]
        found: list[SyncError] = []
        if not self.signer_is_owner:
            found.append(
                Permanent(
                    f"signer {self.signer} is not the owner {self.owner} of app contract "
                    f"{self.app_contract}; only the owner can add compose hashes (an owner that is a "
                    "contract, such as a multisig, needs its own approval flow)",
                    reason=Reason.NOT_CONTRACT_OWNER,
                )
            )
        if not self.device_ok:
            found.append(
                Permanent(
                    f"device {self.device_id} is not allowed by app contract {self.app_contract} and "
                    "allowAnyDevice() is false, so the CVM would not boot after the update. Allowing a "
                    f"device is an explicit decision: the owner calls addDevice({self.device_id}) on the "
                    "contract (or setAllowAnyDevice(true)); the operator never does it on its own",
                    reason=Reason.DEVICE_NOT_ALLOWED,
                )
            )
        required = self.required_wei
        if self.signer_is_owner and required is not None and not self.funded:
            found.append(
                Permanent(
                    f"signer {self.signer} holds {_eth(self.balance_wei or 0)} ETH but the "
                    f"transaction may cost up to {_eth(required)} ETH (gas {self.estimated_gas} x max "
                    f"fee {self.max_fee_per_gas} wei) on chain {self.rpc_chain_id}: fund the signer",
                    reason=Reason.INSUFFICIENT_FUNDS,
                )
            )
        return found

    def raise_for_problems(self) -> None:
        problems = self.problems()
        if problems:
            raise problems[0]


@dataclass(frozen=True)
class ChainTransaction:
    """A mined, confirmed transaction that is not a compose-hash registration (``addDevice``)."""

    tx_hash: str
    block_number: int
    chain_id: int


class SignerLocks:
    """One lock per (chain id, signer address): a signer's transactions get nonces one at a time.

    Locks belong to an event loop, so they are kept per running loop as well.
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[int, int, str], asyncio.Lock] = {}

    def for_signer(self, chain_id: int, address: str) -> asyncio.Lock:
        key = (id(asyncio.get_running_loop()), chain_id, address.lower())
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


# Shared by every registrar of the process: resources that share a key share its nonce stream.
PROCESS_SIGNER_LOCKS: Final = SignerLocks()


@dataclass(frozen=True)
class _Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int | None  # None: a legacy gas price (max_fee_per_gas)


@dataclass(frozen=True)
class _Session:
    """One call's view of the chain: the client, the contract and what redacts its secrets."""

    target: ChainTarget
    w3: AsyncWeb3[AsyncHTTPProvider]
    contract: AsyncContract
    address: ChecksumAddress
    endpoint: str  # the RPC URL, redacted
    redact: Redactor


@dataclass(frozen=True)
class _Signed:
    """A transaction signed and ready to send; ``PendingTransaction`` for compose hashes."""

    sender: str
    nonce: int
    tx_hash: str
    raw_transaction: str


class Web3Registrar:
    """The ``Registrar`` port on web3.py: one HTTP provider and session per RPC URL, kept until
    :meth:`aclose`."""

    def __init__(
        self, settings: RegistrarSettings | None = None, *, signer_locks: SignerLocks | None = None
    ) -> None:
        self.settings = settings or RegistrarSettings()
        self._locks = signer_locks or PROCESS_SIGNER_LOCKS
        self._clients: dict[str, AsyncWeb3[AsyncHTTPProvider]] = {}
        self._clients_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close every HTTP session. The registrar opens new ones if used again."""
        clients, self._clients = self._clients, {}
        for w3 in clients.values():
            try:
                await w3.provider.disconnect()
            except Exception as exc:  # closing must not fail a shutdown
                logger.debug("closing a chain RPC session failed: %s", type(exc).__name__)

    # -- the Registrar port ------------------------------------------------------------------------

    async def register(
        self,
        request: RegistrationRequest,
        *,
        persist: PersistPending,
        resume_from: PendingTransaction | None = None,
    ) -> Registration:
        compose_hash = _bytes32(request.compose_hash, "compose hash")
        signer = _account(request.signer_key)
        session = await self._session(request.target, request.signer_key)
        deadline = time.monotonic() + self.settings.receipt_timeout
        used_nonce = 0
        try:
            if resume_from is not None:
                registration = await self._resume(session, request, compose_hash, resume_from, deadline)
                if registration is not None:
                    return registration
                if resume_from.sender.lower() == signer.address.lower():
                    used_nonce = resume_from.nonce + 1
            return await self._register_fresh(
                session, request, signer, compose_hash, persist, deadline, min_nonce=used_nonce
            )
        except SyncError as error:
            logger.warning(
                "registering compose hash %s on %s (chain %s) failed: %s",
                _hex(compose_hash),
                session.address,
                request.target.chain_id,
                error,
            )
            raise

    async def verify_registration(
        self, target: ChainTarget, compose_hash: str, tx_hash: str, confirmations: int
    ) -> Registration:
        hash_bytes = _bytes32(compose_hash, "compose hash")
        tx = _hex(_bytes32(tx_hash, "transaction hash"))
        session = await self._session(target, None)
        deadline = time.monotonic() + self.settings.receipt_timeout
        try:
            await self._check_chain(session)
            registration = await self._verify(session, hash_bytes, tx, confirmations, deadline, wait=True)
            allowed = await self._rpc(
                session,
                "reading allowedComposeHashes",
                session.contract.functions.allowedComposeHashes(hash_bytes).call(),
            )
            if not allowed:
                raise Permanent(
                    f"transaction {tx} added compose hash {_hex(hash_bytes)}, but app contract "
                    f"{session.address} no longer allows it (removed since)",
                    reason=Reason.COMPOSE_HASH_NOT_ALLOWED,
                )
            return registration
        except SyncError as error:
            logger.warning("verifying registration %s of %s failed: %s", tx, _hex(hash_bytes), error)
            raise

    # -- more than the port ------------------------------------------------------------------------

    async def preflight(self, request: RegistrationRequest) -> Preflight:
        """Read everything :meth:`register` checks before it signs; sends nothing."""
        compose_hash = _bytes32(request.compose_hash, "compose hash")
        signer = _account(request.signer_key)
        session = await self._session(request.target, request.signer_key)
        return await self._preflight(session, signer, compose_hash, request.device_id)

    async def add_device(
        self, target: ChainTarget, signer_key: Secret, device_id: str, *, confirmations: int = 1
    ) -> ChainTransaction | None:
        """Allow a device on the app contract (``addDevice``); ``None`` when it already is.

        Never called by the registration path: allowing a device decides where the app may run.
        Adding a device twice only costs gas, so this path keeps no pending record.
        """
        device = _bytes32(device_id, "device id")
        signer = _account(signer_key)
        session = await self._session(target, signer_key)
        deadline = time.monotonic() + self.settings.receipt_timeout
        functions = session.contract.functions
        await self._check_chain(session)
        owner, allowed = await asyncio.gather(
            self._rpc(session, "reading owner()", functions.owner().call()),
            self._rpc(session, "reading allowedDeviceIds", functions.allowedDeviceIds(device).call()),
        )
        if allowed:
            return None
        if str(owner).lower() != signer.address.lower():
            raise Permanent(
                f"signer {signer.address} is not the owner {owner} of app contract {session.address}",
                reason=Reason.NOT_CONTRACT_OWNER,
            )
        data = session.contract.encode_abi("addDevice", args=[device])
        async with self._locks.for_signer(target.chain_id, signer.address):
            gas, fees = await self._quote(session, signer, data)
            await self._check_funds(session, signer, gas, fees)
            signed = await self._sign(session, signer, data, gas, fees)
            await self._broadcast(session, signed)
        receipt = await self._await_receipt(session, signed, confirmations, deadline)
        if receipt is None:
            raise RetryLater(
                f"addDevice transaction {signed.tx_hash} was displaced by another transaction of "
                f"{signer.address} with nonce {signed.nonce}; try again",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        block = self._check_receipt(session, signed.tx_hash, receipt, DEVICE_ADDED_TOPIC, device, "addDevice")
        return ChainTransaction(tx_hash=signed.tx_hash, block_number=block, chain_id=target.chain_id)

    # -- registration steps ------------------------------------------------------------------------

    async def _resume(
        self,
        session: _Session,
        request: RegistrationRequest,
        compose_hash: bytes,
        record: PendingTransaction,
        deadline: float,
    ) -> Registration | None:
        """Finish a recorded transaction; ``None`` when its nonce went to another transaction."""
        _check_record(record, request.target, compose_hash)
        await self._check_chain(session)
        signed = _Signed(record.sender, record.nonce, record.tx_hash, record.raw_transaction)
        if await self._receipt(session, signed.tx_hash) is None and not await self._nonce_taken(
            session, signed
        ):
            # Never broadcast, or dropped by the node: the same bytes again, never new ones.
            logger.info("re-broadcasting recorded transaction %s (nonce %s)", signed.tx_hash, signed.nonce)
            await self._broadcast(session, signed)
        receipt = await self._await_receipt(session, signed, request.confirmations, deadline)
        if receipt is None:
            logger.info(
                "nonce %s of %s was used by another transaction; %s will never be mined",
                signed.nonce,
                signed.sender,
                signed.tx_hash,
            )
            return None
        return self._registration(session, signed.tx_hash, receipt, compose_hash)

    async def _register_fresh(
        self,
        session: _Session,
        request: RegistrationRequest,
        signer: LocalAccount,
        compose_hash: bytes,
        persist: PersistPending,
        deadline: float,
        *,
        min_nonce: int,
    ) -> Registration:
        for _attempt in range(max(1, self.settings.max_fresh_attempts)):
            preflight = await self._preflight(session, signer, compose_hash, request.device_id)
            preflight.raise_for_problems()
            if preflight.hash_allowed and request.known_tx_hash:
                reused = await self._try_reuse(session, compose_hash, request, deadline)
                if reused is not None:
                    return reused
            assert preflight.estimated_gas is not None  # raise_for_problems: the signer is the owner
            assert preflight.max_fee_per_gas is not None
            fees = _Fees(preflight.max_fee_per_gas, preflight.max_priority_fee_per_gas)
            data = session.contract.encode_abi("addComposeHash", args=[compose_hash])
            async with self._locks.for_signer(request.target.chain_id, signer.address):
                signed = await self._sign(
                    session, signer, data, preflight.estimated_gas, fees, min_nonce=min_nonce
                )
                record = PendingTransaction(
                    chain_id=request.target.chain_id,
                    sender=signed.sender,
                    nonce=signed.nonce,
                    tx_hash=signed.tx_hash,
                    raw_transaction=signed.raw_transaction,
                    compose_hash=_hex(compose_hash),
                    app_contract=session.address,
                )
                # The caller's record first: a crash after this point resumes, never re-signs.
                await persist(record)
                logger.info(
                    "sending addComposeHash(%s) to %s: transaction %s, nonce %s",
                    record.compose_hash,
                    session.address,
                    record.tx_hash,
                    record.nonce,
                )
                await self._broadcast(session, signed)
            receipt = await self._await_receipt(session, signed, request.confirmations, deadline)
            if receipt is not None:
                return self._registration(session, signed.tx_hash, receipt, compose_hash)
            min_nonce = signed.nonce + 1
            logger.info(
                "nonce %s of %s was used by another transaction before %s was mined; signing again",
                signed.nonce,
                signed.sender,
                signed.tx_hash,
            )
        raise RetryLater(
            f"other transactions of signer {signer.address} kept taking the nonce of the registration "
            f"of {_hex(compose_hash)}; will try again",
            reason=Reason.CHAIN_UNAVAILABLE,
        )

    async def _try_reuse(
        self, session: _Session, compose_hash: bytes, request: RegistrationRequest, deadline: float
    ) -> Registration | None:
        assert request.known_tx_hash is not None
        try:
            tx = _hex(_bytes32(request.known_tx_hash, "known transaction hash"))
            return await self._verify(session, compose_hash, tx, request.confirmations, deadline, wait=False)
        except RetryLater as error:
            if error.reason is Reason.CHAIN_UNAVAILABLE:
                raise
            logger.info(
                "known registration %s is not usable (%s); sending a new one", request.known_tx_hash, error
            )
        except Permanent as error:
            logger.info(
                "known registration %s is not usable (%s); sending a new one", request.known_tx_hash, error
            )
        return None

    async def _verify(
        self,
        session: _Session,
        compose_hash: bytes,
        tx_hash: str,
        confirmations: int,
        deadline: float,
        *,
        wait: bool,
    ) -> Registration:
        """A transaction made elsewhere (or earlier): mined, confirmed and logging the hash.

        A mined transaction is waited for until it has its confirmations; one still pending only
        when ``wait`` is true. A transaction the node does not know is not waited for.
        """
        while True:
            receipt = await self._receipt(session, tx_hash)
            if receipt is not None:
                # Checked before counting confirmations: a reverted transaction never becomes valid.
                registration = self._registration(session, tx_hash, receipt, compose_hash)
                head = await self._rpc(session, "reading the block number", session.w3.eth.block_number)
                if head - receipt["blockNumber"] + 1 >= confirmations:
                    return replace(registration, reused=True)
            elif not wait or not await self._known(session, tx_hash):
                raise RetryLater(
                    f"transaction {tx_hash} is not mined on chain {session.target.chain_id} "
                    f"(as seen by {session.endpoint})",
                    reason=Reason.AWAITING_TRANSACTION,
                )
            if time.monotonic() >= deadline:
                raise RetryLater(
                    f"transaction {tx_hash} not confirmed within {self.settings.receipt_timeout:.0f}s",
                    reason=Reason.AWAITING_TRANSACTION,
                )
            await asyncio.sleep(self.settings.poll_interval)

    async def _preflight(
        self, session: _Session, signer: LocalAccount, compose_hash: bytes, device_id: str | None
    ) -> Preflight:
        target = session.target
        rpc_chain_id = await self._rpc(session, "reading the chain id", session.w3.eth.chain_id)
        base = Preflight(
            rpc_chain_id=rpc_chain_id,
            expected_chain_id=target.chain_id,
            app_contract=session.address,
            signer=signer.address,
        )
        if not base.chain_ok:
            return base
        functions = session.contract.functions
        device = _bytes32(device_id, "device id") if device_id else None

        async def device_allowed() -> bool | None:
            if device is None:
                return None
            allowed: bool = await self._rpc(
                session, "reading allowedDeviceIds", functions.allowedDeviceIds(device).call()
            )
            return allowed

        owner, any_device, device_ok, hash_allowed, balance = await asyncio.gather(
            self._rpc(session, "reading owner()", functions.owner().call()),
            self._rpc(session, "reading allowAnyDevice", functions.allowAnyDevice().call()),
            device_allowed(),
            self._rpc(
                session, "reading allowedComposeHashes", functions.allowedComposeHashes(compose_hash).call()
            ),
            self._rpc(session, "reading the signer's balance", session.w3.eth.get_balance(signer.address)),
        )
        checked = replace(
            base,
            owner=str(owner),
            balance_wei=int(balance),
            device_id=_hex(device) if device is not None else None,
            any_device_allowed=bool(any_device),
            device_allowed=device_ok,
            hash_allowed=bool(hash_allowed),
        )
        if not checked.signer_is_owner:
            return checked
        data = session.contract.encode_abi("addComposeHash", args=[compose_hash])
        gas, fees = await self._quote(session, signer, data)
        return replace(
            checked,
            estimated_gas=gas,
            max_fee_per_gas=fees.max_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
        )

    # -- transactions --------------------------------------------------------------------------------

    async def _quote(self, session: _Session, signer: LocalAccount, data: HexStr) -> tuple[int, _Fees]:
        """Gas limit (estimate with margin) and EIP-1559 fees, or a gas price on older chains."""
        params: TxParams = {"from": signer.address, "to": session.address, "data": data, "value": Wei(0)}
        estimate, block = await asyncio.gather(
            self._rpc(session, "estimating gas", session.w3.eth.estimate_gas(params)),
            self._rpc(session, "reading the latest block", session.w3.eth.get_block("latest")),
        )
        gas = int(estimate * self.settings.gas_margin) + 1
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            price = await self._rpc(session, "reading the gas price", session.w3.eth.gas_price)
            return gas, _Fees(max_fee_per_gas=int(price), max_priority_fee_per_gas=None)
        try:
            tip = int(await session.w3.eth.max_priority_fee)
        except Web3RPCError:
            tip = _FALLBACK_PRIORITY_FEE  # a node without eth_maxPriorityFeePerGas
        except Exception as exc:
            error = self._translate(session, exc, "reading the priority fee")
        else:
            # Twice the base fee survives six full blocks of base-fee increases before it is mined.
            return gas, _Fees(max_fee_per_gas=2 * int(base_fee) + tip, max_priority_fee_per_gas=tip)
        raise error from None

    async def _check_funds(self, session: _Session, signer: LocalAccount, gas: int, fees: _Fees) -> None:
        balance = await self._rpc(
            session, "reading the signer's balance", session.w3.eth.get_balance(signer.address)
        )
        if balance < gas * fees.max_fee_per_gas:
            raise Permanent(
                f"signer {signer.address} holds {_eth(balance)} ETH but the transaction may cost up to "
                f"{_eth(gas * fees.max_fee_per_gas)} ETH: fund the signer",
                reason=Reason.INSUFFICIENT_FUNDS,
            )

    async def _sign(
        self,
        session: _Session,
        signer: LocalAccount,
        data: HexStr,
        gas: int,
        fees: _Fees,
        *,
        min_nonce: int = 0,
    ) -> _Signed:
        """Sign with the signer's next nonce. Call with the signer's lock held.

        ``min_nonce`` is a nonce known to be used already plus one: a lagging RPC backend can
        answer a pending count below it.
        """
        pending = await self._rpc(
            session,
            "reading the signer's nonce",
            session.w3.eth.get_transaction_count(signer.address, "pending"),
        )
        nonce = max(pending, min_nonce)
        tx: dict[str, Any] = {
            "chainId": session.target.chain_id,
            "nonce": nonce,
            "to": session.address,
            "value": 0,
            "data": data,
            "gas": gas,
        }
        if fees.max_priority_fee_per_gas is None:
            tx["gasPrice"] = fees.max_fee_per_gas
        else:
            tx.update(
                type=2, maxFeePerGas=fees.max_fee_per_gas, maxPriorityFeePerGas=fees.max_priority_fee_per_gas
            )
        signed = signer.sign_transaction(tx)
        return _Signed(
            sender=signer.address,
            nonce=nonce,
            tx_hash=_hex(bytes(signed.hash)),
            raw_transaction=_hex(bytes(signed.raw_transaction)),
        )

    async def _broadcast(self, session: _Session, signed: _Signed) -> None:
        """``eth_sendRawTransaction``. A node that has the bytes, or whose nonce moved on, is not an
        error here: waiting for the receipt tells which transaction got the nonce."""
        try:
            await session.w3.eth.send_raw_transaction(HexBytes(signed.raw_transaction))
        except Web3RPCError as exc:
            rejection = classify_rejection(exc)
            if rejection in (
                Rejection.ALREADY_KNOWN,
                Rejection.NONCE_TOO_LOW,
                Rejection.REPLACEMENT_UNDERPRICED,
            ):
                logger.info(
                    "node declined transaction %s (%s): %s",
                    signed.tx_hash,
                    rejection.value if rejection else "",
                    session.redact(node_message(exc)),
                )
                return
            error = self._translate(session, exc, f"broadcasting transaction {signed.tx_hash}")
        except Exception as exc:
            error = self._translate(session, exc, f"broadcasting transaction {signed.tx_hash}")
        else:
            return
        raise error from None

    async def _await_receipt(
        self, session: _Session, signed: _Signed, confirmations: int, deadline: float
    ) -> TxReceipt | None:
        """Wait until the transaction has ``confirmations`` blocks; ``None`` when its nonce was used
        by another transaction. Raises ``RetryLater`` at the deadline or when the RPC stays down."""
        settings = self.settings
        next_rebroadcast = time.monotonic() + settings.rebroadcast_interval
        unreachable_since: float | None = None
        while True:
            try:
                receipt = await self._receipt(session, signed.tx_hash)
                if receipt is not None:
                    if confirmations <= 1:
                        return receipt
                    head = await self._rpc(session, "reading the block number", session.w3.eth.block_number)
                    if head - receipt["blockNumber"] + 1 >= confirmations:
                        return receipt
                elif await self._nonce_taken(session, signed):
                    return None
                elif time.monotonic() >= next_rebroadcast:
                    # A node may have dropped it from its pool; the same bytes are always safe.
                    await self._broadcast(session, signed)
                    next_rebroadcast = time.monotonic() + settings.rebroadcast_interval
                unreachable_since = None
            except RetryLater as error:
                if error.reason is not Reason.CHAIN_UNAVAILABLE:
                    raise
                now = time.monotonic()
                unreachable_since = unreachable_since if unreachable_since is not None else now
                if now - unreachable_since >= settings.rpc_failure_grace or now >= deadline:
                    raise RetryLater(
                        f"{error.message}; transaction {signed.tx_hash} is recorded and will be "
                        "followed up when the RPC answers again",
                        reason=Reason.CHAIN_UNAVAILABLE,
                    ) from None
            if time.monotonic() >= deadline:
                raise RetryLater(
                    f"transaction {signed.tx_hash} (nonce {signed.nonce}) not confirmed within "
                    f"{settings.receipt_timeout:.0f}s on chain {session.target.chain_id}; it is recorded "
                    "and will be followed up",
                    reason=Reason.CHAIN_UNAVAILABLE,
                )
            await asyncio.sleep(settings.poll_interval)

    async def _nonce_taken(self, session: _Session, signed: _Signed) -> bool:
        """True when a mined transaction other than ``signed`` used its nonce.

        The mined nonce is read before the receipt: had ``signed`` itself been mined in between,
        the later receipt read sees it.
        """
        mined_nonce = await self._rpc(
            session,
            "reading the signer's mined nonce",
            session.w3.eth.get_transaction_count(signed.sender, "latest"),  # type: ignore[arg-type]
        )
        if mined_nonce <= signed.nonce:
            return False
        return await self._receipt(session, signed.tx_hash) is None

    async def _receipt(self, session: _Session, tx_hash: str) -> TxReceipt | None:
        try:
            receipt: TxReceipt = await session.w3.eth.get_transaction_receipt(HexStr(tx_hash))
        except TransactionNotFound:
            return None
        except Exception as exc:
            error = self._translate(session, exc, f"reading the receipt of {tx_hash}")
        else:
            return receipt
        raise error from None

    async def _known(self, session: _Session, tx_hash: str) -> bool:
        try:
            await session.w3.eth.get_transaction(HexStr(tx_hash))
        except TransactionNotFound:
            return False
        except Exception as exc:
            error = self._translate(session, exc, f"reading transaction {tx_hash}")
        else:
            return True
        raise error from None

    def _registration(
        self, session: _Session, tx_hash: str, receipt: TxReceipt, compose_hash: bytes
    ) -> Registration:
        block = self._check_receipt(
            session, tx_hash, receipt, COMPOSE_HASH_ADDED_TOPIC, compose_hash, "addComposeHash"
        )
        return Registration(
            compose_hash=_hex(compose_hash),
            tx_hash=tx_hash,
            block_number=block,
            chain_id=session.target.chain_id,
        )

    def _check_receipt(
        self, session: _Session, tx_hash: str, receipt: TxReceipt, topic: str, value: bytes, function: str
    ) -> int:
        """The receipt's block, once it shows success, the contract as recipient and the event."""
        block = int(receipt["blockNumber"])
        if receipt["status"] != 1:
            raise Permanent(
                f"transaction {tx_hash} ({function}) reverted in block {block} "
                f"on chain {session.target.chain_id}",
                reason=Reason.TRANSACTION_FAILED,
            )
        recipient = receipt.get("to")
        if recipient is None or str(recipient).lower() != session.address.lower():
            raise Permanent(
                f"transaction {tx_hash} was sent to {recipient}, not to app contract {session.address}",
                reason=Reason.TRANSACTION_FAILED,
            )
        for log in receipt["logs"]:
            topics = log["topics"]
            if (
                str(log["address"]).lower() == session.address.lower()
                and topics
                and _hex(bytes(topics[0])) == topic
                and bytes(log["data"]) == value
            ):
                return block
        event = "ComposeHashAdded" if topic == COMPOSE_HASH_ADDED_TOPIC else "DeviceAdded"
        raise Permanent(
            f"transaction {tx_hash} carries no {event}({_hex(value)}) log "
            f"from app contract {session.address}",
            reason=Reason.TRANSACTION_FAILED,
        )

    # -- plumbing ------------------------------------------------------------------------------------

    async def _check_chain(self, session: _Session) -> None:
        chain_id = await self._rpc(session, "reading the chain id", session.w3.eth.chain_id)
        if chain_id != session.target.chain_id:
            raise Permanent(
                f"chain RPC {session.endpoint} serves chain {chain_id}, but the CVM's app contract "
                f"{session.address} lives on chain {session.target.chain_id}",
                reason=Reason.WRONG_CHAIN,
            )

    async def _rpc(self, session: _Session, action: str, call: Awaitable[T]) -> T:
        """Await one RPC call; failures come out as redacted ``SyncError``s with no chained cause."""
        try:
            return await call
        except Exception as exc:
            error = self._translate(session, exc, action)
        raise error from None

    def _translate(self, session: _Session, exc: Exception, action: str) -> SyncError:
        error = translate(
            exc,
            action=action,
            endpoint=session.endpoint,
            redact=session.redact,
            contract=session.address,
            chain_id=session.target.chain_id,
        )
        logger.debug("%s", error)
        return error

    async def _session(self, target: ChainTarget, signer_key: Secret | None) -> _Session:
        address = _checksum(target.app_contract)
        w3 = await self._client(target.rpc_url)
        return _Session(
            target=target,
            w3=w3,
            contract=w3.eth.contract(address=address, abi=DSTACK_APP_ABI),
            address=address,
            endpoint=redact_url(target.rpc_url.reveal()),
            redact=Redactor([target.rpc_url, signer_key]),
        )

    async def _client(self, rpc_url: Secret) -> AsyncWeb3[AsyncHTTPProvider]:
        url = rpc_url.reveal()
        async with self._clients_lock:
            w3 = self._clients.get(url)
            if w3 is not None:
                return w3
            provider = _RedactingHTTPProvider(
                url,
                request_kwargs={"timeout": aiohttp.ClientTimeout(total=self.settings.request_timeout)},
                # One quick retry for a reset connection; waits and resumes handle longer outages.
                exception_retry_configuration=ExceptionRetryConfiguration(
                    errors=(aiohttp.ClientConnectionError, TimeoutError), retries=2, backoff_factor=0.05
                ),
            )
            # Our own session: kept-alive connections (web3's default closes each one).
            await provider.cache_async_session(
                aiohttp.ClientSession(
                    raise_for_status=True,
                    connector=aiohttp.TCPConnector(limit=16, enable_cleanup_closed=True),
                )
            )
            w3 = AsyncWeb3(provider, middleware=[])
            self._clients[url] = w3
            return w3


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """web3's provider loggers print the endpoint URL at debug level: redact it on the way out."""

    def __init__(self, logger: logging.Logger, redact: Redactor) -> None:
        super().__init__(logger, {})
        self._redact = redact

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        kwargs.pop("exc_info", None)  # a traceback would quote the URL again
        self.logger.log(level, "%s", self._redact(text), **kwargs)


class _RedactingHTTPProvider(AsyncHTTPProvider):
    """``AsyncHTTPProvider`` whose logs and ``str()`` never show the endpoint's secret parts."""

    def __init__(self, endpoint_uri: str, **kwargs: Any) -> None:
        super().__init__(endpoint_uri, **kwargs)
        redact = Redactor([endpoint_uri])
        self.logger = _RedactingLogger(logging.getLogger("web3.providers.AsyncHTTPProvider"), redact)  # type: ignore[assignment]
        manager = self._request_session_manager
        manager.logger = _RedactingLogger(manager.logger, redact)  # type: ignore[assignment]
        self._redacted_endpoint = redact_url(endpoint_uri)

    def __str__(self) -> str:
        return f"RPC connection {self._redacted_endpoint}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._redacted_endpoint}>"


def _check_record(record: PendingTransaction, target: ChainTarget, compose_hash: bytes) -> None:
    """A resume record must belong to this registration; another one is the caller's mistake."""
    mismatches = [
        label
        for label, same in (
            ("chain id", record.chain_id == target.chain_id),
            ("app contract", record.app_contract.lower() == target.app_contract.lower()),
            ("compose hash", record.compose_hash.lower().removeprefix("0x") == compose_hash.hex()),
        )
        if not same
    ]
    try:
        raw = bytes(HexBytes(record.raw_transaction))
        recorded_hash = bytes(HexBytes(record.tx_hash))
    except ValueError:
        mismatches.append("transaction bytes")
    else:
        if AsyncWeb3.keccak(raw) != recorded_hash:
            mismatches.append("transaction hash")
    if mismatches:
        raise Permanent(
            f"the pending transaction record {record.tx_hash} does not match this registration "
            f"({', '.join(mismatches)} differ); discard it before registering",
            reason=Reason.INVALID_SPEC,
        )


def _account(signer_key: Secret) -> LocalAccount:
    try:
        account: LocalAccount = Account.from_key(signer_key.reveal())
    except Exception:  # eth_keys' messages may quote the value
        error = Permanent("the signer key is not a valid secp256k1 private key", reason=Reason.INVALID_SPEC)
    else:
        return account
    raise error from None


def _checksum(address: str) -> ChecksumAddress:
    try:
        return AsyncWeb3.to_checksum_address(address)
    except ValueError:
        error = Permanent(f"app contract address {address!r} is not an address", reason=Reason.INVALID_SPEC)
    raise error from None


def _bytes32(value: str, what: str) -> bytes:
    text = value.strip().lower().removeprefix("0x")
    if len(text) != 64:
        raise Permanent(f"{what} {value!r} is not 32 bytes of hex", reason=Reason.INVALID_SPEC)
    try:
        return bytes.fromhex(text)
    except ValueError:
        error = Permanent(f"{what} {value!r} is not hex", reason=Reason.INVALID_SPEC)
    raise error from None


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _eth(wei: int) -> str:
    return f"{wei / _WEI_PER_ETH:.6f}"
