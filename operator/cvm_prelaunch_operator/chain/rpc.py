"""The chain as the reconcile core asks about it: one JSON-RPC round per question, no decisions.

:class:`Web3ChainConnector` implements ``reconcile.ports.ChainConnector`` and hands out
:class:`JsonRpcChainClient`\\ s (``ChainClient``). What they guarantee:

One round trip per call
    ``survey`` and ``track`` send every JSON-RPC call they need as one batch in one HTTP request
    (``track`` a second one when the sender's nonce is used past a transaction that had no receipt:
    the receipts of those are asked again, so that one mined between the reads is not taken for
    replaced); ``send``, ``replay`` and ``block_timestamp`` send one call; ``compose_hash_logs``
    sends one batch of at most 10 ``eth_getLogs`` of at most 10,000 blocks each (a wider range is
    the caller's error, ``ValueError``). Nothing is retried except once, at once, a request whose
    kept-alive connection was reset; every call ends within ``CHAIN_RPC_TIMEOUT_SECONDS`` (at most
    15 s), the retry included. Whether and when to ask again is the core's decision.

Why not web3's ``batch_requests()``
    It raises at the first item that failed and drops the answers of the others (a reverted
    ``eth_estimateGas`` would cost the whole survey), pairs answers with calls by position rather
    than by id, reads bodies without a size limit and hides the HTTP status and ``Retry-After``.
    The client therefore speaks JSON-RPC itself over its own aiohttp session (web3's transport too,
    and unlike httpx it logs no request URLs). web3's packages still provide keccak and checksums.

Each item of a batch answers for itself
    ``survey``: a reverted estimate is ``gas_estimate=None`` with the revert data in
    ``estimate_revert`` (``0x`` when the node gave none); an unsupported or failing
    ``eth_maxPriorityFeePerGas`` or ``eth_gasPrice`` is None. Any other failed item makes the call
    raise ``RetryLater`` naming the method and quoting the node. A view of the contract answered
    with no data (no contract at the address on the RPC's chain) or reverting is ``Permanent``
    with ``WrongChain``: the message names the RPC's chain id, so a wrong RPC shows as such. Each
    item reads ``latest`` on its own: a load-balanced RPC may answer them from heads a block apart.
    ``track`` keys its mappings by the hashes as the caller wrote them (at most 32 per call).
    ``compose_hash_logs`` skips pending and removed logs and sorts by block; ``to_block`` should
    not pass the head (anvil and recent geth refuse such ranges, and the refusal is ``RetryLater``).

Untrusted answers
    A receipt or transaction whose hash is not the one asked for, a sent transaction whose
    returned hash is not keccak of the bytes, a block that is not the one asked for, a missing or
    duplicated batch id, a value of the wrong shape: all ``RetryLater`` (``ChainUnavailable``)
    naming what was wrong and never treated as "absent", since the core acts on absence (it
    re-broadcasts or replaces). Receipts without a block (a pending receipt of old nodes) are
    absent. Logs are filtered to the contract, the topic, the hash and the range asked for.
    Bodies larger than ``max_response_bytes`` (4 MiB; decompressed) are refused unread; bodies
    that are not UTF-8 or nest deeper than about 16 levels are refused before parsing (importing
    eth_account raises Python's recursion limit to 100,000, and parsing JSON nested that deep
    kills the process with a C stack overflow instead of raising).

HTTP
    429 raises ``RetryLater`` with ``retry_after`` from ``Retry-After`` (seconds or an HTTP date,
    at most an hour); 408, 425, 5xx and transport failures raise ``RetryLater`` with reason
    ``ChainUnavailable``; other 4xx (and 3xx: redirects are not followed) raise ``Permanent``.
    A 400 or 5xx whose body is a JSON-RPC answer to the request is read as that answer (some
    gateways put node errors behind error statuses).

``send``
    Returns ``SendResult`` for what the core resolves itself: accepted, known (the node has the
    bytes), nonce too low, underpriced (fee cap below the base fee or the node's minimum tip),
    replacement underpriced; the node texts of geth, erigon, nethermind, besu, reth and anvil are
    in ``chain/failures.py``. Insufficient funds raise ``Permanent`` (``InsufficientFunds``),
    bytes the node calls invalid ``Permanent`` (``TransactionFailed``); anything else ``RetryLater``.

Secrets
    The RPC URL may carry a key (path, query, user info): every message names the endpoint by its
    redacted form (``https://host/***``), node and library texts are redacted and cut to 256
    characters, no library exception is chained into a raised error, and the client's ``repr``
    shows only the redacted URL. The adapter never sees a private key.

Clients
    ``connect`` returns the cached client of a URL (at most 64, least recently used evicted) and
    sends nothing. ``forget(url)`` drops and closes one (its Secret changed); ``aclose()`` closes
    all. A dropped client still in use finishes its calls and closes its session after the last.
    Each client keeps at most 8 connections alive; ``HTTPS_PROXY``/``NO_PROXY`` are honoured, as
    by the Phala Cloud client.

Malformed arguments (not an address, not a 32-byte hash, an empty log range) are the caller's
error and raise ``ValueError``. An optional observer is called after every HTTP request with
``(operation, seconds, ok)``: the operation is the ``ChainClient`` method (``survey``, ``track``,
``send``, ``compose_hash_logs``, ``replay``, ``block_timestamp``); ``ok`` is true when a JSON-RPC
answer to every call came back, whatever each answer said.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.chain.failures import (
    SendRefusal,
    classify_send_error,
    node_text,
    revert_data,
)
from cvm_prelaunch_operator.domain.chain import (
    COMPOSE_HASH_ADDED_TOPIC,
    Head,
    LogEntry,
    LogRef,
    Receipt,
    SendResult,
    Survey,
    Tracking,
    TxView,
    hex32,
    is_address,
)
from cvm_prelaunch_operator.domain.config import from_env, setting
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.proxy import proxy_from_environment
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.retry import retry_after_seconds as parse_retry_after
from cvm_prelaunch_operator.domain.secrets import Redactor, Secret, redact_url

if TYPE_CHECKING:
    from cvm_prelaunch_operator.reconcile.ports import ChainClient, ChainConnector

logger = logging.getLogger(__name__)

T = TypeVar("T")

Observer = Callable[[str, float, bool], None]
"""Called after every HTTP request: the ``ChainClient`` operation, seconds, whether it was answered."""

MAX_TIMEOUT_SECONDS: Final = 15.0
LOG_CHUNK_BLOCKS: Final = 10_000  # what most providers accept in one eth_getLogs
MAX_LOG_CHUNKS: Final = 10
MAX_TRACKED: Final = 32  # transactions one track() looks at
RETRY_AFTER_CAP_SECONDS: Final = 3600.0
_RESET_RETRY_DELAY: Final = 0.05
_RESET_ERRNOS: Final = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
USER_AGENT: Final = f"cvm-prelaunch-operator/{__version__} aiohttp/{aiohttp.__version__}"


def _selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


OWNER_SELECTOR: Final = _selector("owner()")
ALLOW_ANY_DEVICE_SELECTOR: Final = _selector("allowAnyDevice()")
ALLOWED_DEVICE_IDS_SELECTOR: Final = _selector("allowedDeviceIds(bytes32)")
ALLOWED_COMPOSE_HASHES_SELECTOR: Final = _selector("allowedComposeHashes(bytes32)")


def _timeout_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise ValueError(f"{text!r} is not between 0 and {MAX_TIMEOUT_SECONDS:g} seconds")
    return value


@dataclass(frozen=True)
class ChainRpcSettings:
    """Bounds of the chain adapter. Only the timeout is an operator setting; the rest are for tests."""

    request_timeout: float = setting(
        "CHAIN_RPC_TIMEOUT_SECONDS",
        10.0,
        "bound of one chain RPC request or batch, a reset connection's one retry included (at most 15)",
        parse=_timeout_seconds,
    )
    max_response_bytes: int = 4 * 1024 * 1024
    cache_size: int = 64
    connections_per_client: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.request_timeout <= MAX_TIMEOUT_SECONDS:
            raise ValueError(f"request_timeout must be in (0, {MAX_TIMEOUT_SECONDS:g}] seconds")
        if self.max_response_bytes < 1024 or self.cache_size < 1 or self.connections_per_client < 1:
            raise ValueError("max_response_bytes >= 1024, cache_size >= 1 and connections_per_client >= 1")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChainRpcSettings:
        return from_env(cls, os.environ if environ is None else environ)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: None when absent or unreadable, at most an hour."""
    return parse_retry_after(value, cap=RETRY_AFTER_CAP_SECONDS, now=now)


# -- what came back ---------------------------------------------------------------------------------


class _Malformed(Exception):
    """An answer of the wrong shape; the text is ours and safe."""


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Call:
    method: str
    params: list[Any]


@dataclass(frozen=True)
class _NodeError:
    code: object
    message: str  # as the node said it: redact before quoting
    data: object


@dataclass(frozen=True)
class _Answer:
    result: Any = None
    error: _NodeError | None = None


_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_OPEN_RUN = re.compile(r"[\[{]{17}")  # 17 openings in a row: deeper than answers ever are
_NESTING_PASSES: Final = 16  # answers nest 6 deep; this admits at least 16


def _shallow(text: str) -> bool:
    """True when JSON text nests at most about 16 deep. eth_account's import (through py_ecc) raises
    the recursion limit to 100,000, and ``json.loads`` of a body nested that deep overflows the C
    stack: the process dies. Strings are cut out (escapes first), then each pass removes the
    innermost empty pairs, a level or two, with C-speed string operations."""
    outside = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    brackets = _NOT_BRACKET.sub("", outside)
    for _ in range(_NESTING_PASSES):
        if not brackets:
            return True
        if _OPEN_RUN.search(brackets):
            return False
        shorter = brackets.replace("[]", "").replace("{}", "")
        if shorter == brackets:
            return False  # unbalanced: json.loads would refuse it anyway
        brackets = shorter
    return not brackets


_QUANTITY = re.compile(r"^0x[0-9a-fA-F]{1,64}$")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")


def _quantity(value: object, what: str) -> int:
    if isinstance(value, str) and _QUANTITY.fullmatch(value):
        return int(value, 16)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value  # some nodes answer plain numbers
    raise _Malformed(f"{what} is not a quantity")


def _hash(value: object, what: str) -> str:
    try:
        if isinstance(value, str) and value.startswith("0x"):
            return hex32(value)
    except ValueError:
        pass
    raise _Malformed(f"{what} is not a 32-byte hash")


def _address(value: object, what: str) -> str:
    if isinstance(value, str) and is_address(value):
        return str(to_checksum_address(value))
    raise _Malformed(f"{what} is not an address")


def _optional_address(value: object, what: str) -> str | None:
    return None if value is None else _address(value, what)


def _data(value: object, what: str) -> str:
    if isinstance(value, str) and _HEX.fullmatch(value):
        return value.lower()
    raise _Malformed(f"{what} is not hex data")


def _object(value: object, what: str) -> Mapping[str, Any]:
    if isinstance(value, dict):
        return value
    raise _Malformed(f"{what} is not an object")


def _word(value: object, what: str) -> int:
    """A 32-byte ABI word returned by ``eth_call``."""
    data = _data(value, what)
    if len(data) != 66:
        raise _Malformed(f"{what} is not one 32-byte word")
    return int(data, 16)


def _bool_word(value: object, what: str) -> bool:
    word = _word(value, what)
    if word not in (0, 1):
        raise _Malformed(f"{what} is not a boolean")
    return word == 1


def _head(value: object) -> Head:
    block = _object(value, "the latest block")
    base_fee = block.get("baseFeePerGas")
    return Head(
        number=_quantity(block.get("number"), "the block number"),
        hash=_hash(block.get("hash"), "the block hash"),
        timestamp=_quantity(block.get("timestamp"), "the block timestamp"),
        base_fee=None if base_fee is None else _quantity(base_fee, "the base fee"),
    )


def _receipt(value: object, asked: str) -> Receipt | None:
    if value is None:
        return None
    raw = _object(value, f"the receipt of {asked}")
    tx_hash = _hash(raw.get("transactionHash"), "a receipt's transaction hash")
    if tx_hash != asked:
        raise _Malformed(f"the receipt asked for {asked} is the receipt of {tx_hash}")
    if raw.get("blockNumber") is None or raw.get("blockHash") is None:
        return None  # a pending receipt (older nodes): not mined
    if "status" not in raw:
        raise _Malformed(f"the receipt of {asked} has no status (a pre-Byzantium chain?)")
    status = _quantity(raw.get("status"), "a receipt's status")
    logs = raw.get("logs")
    if not isinstance(logs, list):
        raise _Malformed(f"the receipt of {asked} has no list of logs")
    entries = []
    for item in logs:
        log = _object(item, "a receipt's log")
        topics = log.get("topics")
        if not isinstance(topics, list):
            raise _Malformed("a receipt's log has no list of topics")
        entries.append(
            LogEntry(
                address=_address(log.get("address"), "a log's address"),
                topics=tuple(_hash(topic, "a log topic") for topic in topics),
                data=_data(log.get("data"), "a log's data"),
            )
        )
    return Receipt(
        tx_hash=tx_hash,
        block_number=_quantity(raw.get("blockNumber"), "a receipt's block number"),
        block_hash=_hash(raw.get("blockHash"), "a receipt's block hash"),
        succeeded=status == 1,
        to=_optional_address(raw.get("to"), "a receipt's recipient"),
        logs=tuple(entries),
    )


def _tx_view(value: object, asked: str) -> TxView | None:
    if value is None:
        return None
    raw = _object(value, f"transaction {asked}")
    tx_hash = _hash(raw.get("hash"), "a transaction's hash")
    if tx_hash != asked:
        raise _Malformed(f"the transaction asked for {asked} is transaction {tx_hash}")
    block = raw.get("blockNumber")
    return TxView(
        tx_hash=tx_hash,
        sender=_address(raw.get("from"), "a transaction's sender"),
        to=_optional_address(raw.get("to"), "a transaction's recipient"),
        nonce=_quantity(raw.get("nonce"), "a transaction's nonce"),
        input=_data(raw.get("input", raw.get("data")), "a transaction's input"),
        block_number=None if block is None else _quantity(block, "a transaction's block number"),
    )


# -- arguments ------------------------------------------------------------------------------------


def _arg_address(value: str, what: str) -> str:
    if not is_address(value.strip()):
        raise ValueError(f"{what} {value[:80]!r} is not an address")
    return value.strip().lower()


def _arg_hex(value: str, what: str) -> str:
    text = value.strip()
    if not _HEX.fullmatch(text):
        raise ValueError(f"{what} is not 0x-prefixed hex bytes")
    return text.lower()


# -- the client -------------------------------------------------------------------------------------


class JsonRpcChainClient:
    """``ChainClient`` for one RPC URL. Made by :meth:`Web3ChainConnector.connect`."""

    def __init__(self, rpc_url: Secret, settings: ChainRpcSettings, observer: Observer | None) -> None:
        self._url = rpc_url
        self.endpoint = redact_url(rpc_url.reveal())
        # Read once: raises ValueError (quoting no credentials) for a proxy aiohttp cannot use.
        self._proxy = proxy_from_environment(rpc_url.reveal(), purpose="the chain RPC")
        self._proxy_request_headers: Mapping[str, str] = {}
        if self._proxy is not None and self._proxy.headers and rpc_url.reveal().startswith("http:"):
            # A plain-http request goes to the proxy whole: its credentials ride on each one.
            self._proxy_request_headers = self._proxy.headers
        proxy_secrets = self._proxy.secrets if self._proxy is not None else ()
        self._redact = Redactor([rpc_url, *_url_secrets(rpc_url.reveal()), *proxy_secrets])
        self._settings = settings
        self._observer = observer
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        self._retired = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.endpoint}>"

    __str__ = __repr__

    # -- ChainClient ------------------------------------------------------------------------------

    async def survey(
        self, *, contract: str, compose_hash: str, device_id: str | None, signer: str, call_data: str
    ) -> Survey:
        contract = _arg_address(contract, "contract")
        signer = _arg_address(signer, "signer")
        hash_word = hex32(compose_hash)[2:]
        device_word = hex32(device_id)[2:] if device_id is not None else None
        call_data = _arg_hex(call_data, "call_data")

        def view(data: str) -> _Call:
            return _Call("eth_call", [{"to": contract, "data": data}, "latest"])

        calls = {
            "eth_chainId": _Call("eth_chainId", []),
            "the latest block": _Call("eth_getBlockByNumber", ["latest", False]),
            "owner()": view(OWNER_SELECTOR),
            "allowAnyDevice()": view(ALLOW_ANY_DEVICE_SELECTOR),
            "allowedComposeHashes()": view(ALLOWED_COMPOSE_HASHES_SELECTOR + hash_word),
            "the signer's balance": _Call("eth_getBalance", [signer, "latest"]),
            "the signer's pending nonce": _Call("eth_getTransactionCount", [signer, "pending"]),
            "the signer's mined nonce": _Call("eth_getTransactionCount", [signer, "latest"]),
            "eth_estimateGas": _Call(
                "eth_estimateGas", [{"from": signer, "to": contract, "data": call_data}]
            ),
            "eth_maxPriorityFeePerGas": _Call("eth_maxPriorityFeePerGas", []),
            "eth_gasPrice": _Call("eth_gasPrice", []),
        }
        if device_word is not None:
            calls["allowedDeviceIds()"] = view(ALLOWED_DEVICE_IDS_SELECTOR + device_word)
        answers = dict(zip(calls, await self._exchange("survey", list(calls.values())), strict=True))

        def parse() -> Survey:
            def flag(key: str) -> bool:
                return _bool_word(self._contract_view(key, answers, contract, chain_id), key)

            def number(key: str) -> int:
                return _quantity(self._required("survey", key, answers), key)

            chain_id = number("eth_chainId")
            head = _head(self._required("survey", "the latest block", answers))
            owner_word = _word(self._contract_view("owner()", answers, contract, chain_id), "owner()")
            if owner_word >> 160:
                raise _Malformed("owner() is not an address")
            estimate = answers["eth_estimateGas"]
            gas_estimate: int | None = None
            estimate_revert: str | None = None
            if estimate.error is None:
                gas_estimate = _quantity(estimate.result, "the gas estimate")
            else:
                error = estimate.error
                estimate_revert = revert_data(error.code, error.message, error.data)
                if estimate_revert is None:
                    raise self._item_error("survey", "eth_estimateGas", error)
            return Survey(
                chain_id=chain_id,
                head=head,
                owner=str(to_checksum_address(f"0x{owner_word:040x}")),
                hash_allowed=flag("allowedComposeHashes()"),
                any_device_allowed=flag("allowAnyDevice()"),
                device_allowed=flag("allowedDeviceIds()") if device_word is not None else None,
                signer_balance=number("the signer's balance"),
                pending_nonce=number("the signer's pending nonce"),
                mined_nonce=number("the signer's mined nonce"),
                gas_estimate=gas_estimate,
                estimate_revert=estimate_revert,
                priority_fee=self._optional_quantity(answers["eth_maxPriorityFeePerGas"]),
                gas_price=self._optional_quantity(answers["eth_gasPrice"]),
            )

        return self._parsed("survey", parse)

    async def send(self, raw: str) -> SendResult:
        raw = _arg_hex(raw, "raw")
        if raw == "0x":
            raise ValueError("raw is empty")
        tx_hash = "0x" + keccak(hexstr=raw).hex()
        (answer,) = await self._exchange("send", [_Call("eth_sendRawTransaction", [raw])])
        if answer.error is not None:
            outcome = classify_send_error(answer.error.message)
            text = node_text(answer.error.message, self._redact)
            if isinstance(outcome, SendResult):
                logger.debug("chain RPC %s: transaction %s: %s (%s)", self.endpoint, tx_hash, outcome, text)
                return outcome
            if outcome is SendRefusal.INSUFFICIENT_FUNDS:
                raise Permanent(
                    f"the signer cannot pay for transaction {tx_hash}: {text}",
                    reason=Reason.INSUFFICIENT_FUNDS,
                )
            if outcome is SendRefusal.INVALID:
                raise Permanent(
                    f"chain RPC {self.endpoint} refused transaction {tx_hash} as invalid: {text}",
                    reason=Reason.TRANSACTION_FAILED,
                )
            raise RetryLater(
                f"chain RPC {self.endpoint} did not take transaction {tx_hash}: {text}",
                reason=Reason.CHAIN_UNAVAILABLE,
            )

        def parse() -> SendResult:
            answered = _hash(answer.result, "the transaction hash")
            if answered != tx_hash:
                raise _Malformed(f"the node answered hash {answered} for transaction {tx_hash}")
            return SendResult.ACCEPTED

        return self._parsed("send", parse)

    async def track(self, tx_hashes: Sequence[str], *, sender: str | None) -> Tracking:
        asked = {hex32(value): value for value in tx_hashes}  # normalised -> as the caller wrote it
        if len(asked) > MAX_TRACKED:
            raise ValueError(f"track() looks at {MAX_TRACKED} transactions at most, not {len(asked)}")
        sender_address = _arg_address(sender, "sender") if sender is not None else None
        calls = [_Call("eth_chainId", []), _Call("eth_getBlockByNumber", ["latest", False])]
        if sender_address is not None:
            # The nonces before the receipts: a node that answers a batch in order then never shows a
            # consumed nonce next to a receipt it had not yet.
            calls.append(_Call("eth_getTransactionCount", [sender_address, "latest"]))
            calls.append(_Call("eth_getTransactionCount", [sender_address, "pending"]))
        first_tx = len(calls)
        for tx_hash in asked:
            calls += [
                _Call("eth_getTransactionReceipt", [tx_hash]),
                _Call("eth_getTransactionByHash", [tx_hash]),
            ]
        answers = await self._exchange("track", calls)

        def parse() -> Tracking:
            def result(index: int) -> Any:
                answer = answers[index]
                if answer.error is not None:
                    raise self._item_error("track", calls[index].method, answer.error)
                return answer.result

            receipts: dict[str, Receipt | None] = {}
            transactions: dict[str, TxView | None] = {}
            for position, (tx_hash, original) in enumerate(asked.items()):
                receipts[original] = _receipt(result(first_tx + 2 * position), tx_hash)
                transactions[original] = _tx_view(result(first_tx + 1 + 2 * position), tx_hash)
            return Tracking(
                chain_id=_quantity(result(0), "the chain id"),
                head=_head(result(1)),
                mined_nonce=_quantity(result(2), "a nonce") if sender_address else None,
                receipts=receipts,
                transactions=transactions,
                pending_nonce=_quantity(result(3), "a nonce") if sender_address else None,
            )

        tracking = self._parsed("track", parse)
        unexplained = [
            (tx_hash, original)
            for tx_hash, original in asked.items()
            if tracking.mined_nonce  # None (no sender) or 0 (nothing of the sender's was ever mined)
            and tracking.receipts[original] is None
            and ((view := tracking.transactions[original]) is None or view.nonce < tracking.mined_nonce)
        ]
        if not unexplained:
            return tracking
        # The nonce is used but no receipt was seen: replaced, or mined between the two reads (a
        # node may answer a batch's calls concurrently, a load balancer from two backends). Asked
        # again now, after the nonce was read, a receipt of ours that exists is seen.
        again = [_Call("eth_getTransactionReceipt", [tx_hash]) for tx_hash, _ in unexplained]
        second = await self._exchange("track", again)

        def reread() -> Tracking:
            receipts = dict(tracking.receipts)
            for (tx_hash, original), answer in zip(unexplained, second, strict=True):
                if answer.error is not None:
                    raise self._item_error("track", "eth_getTransactionReceipt", answer.error)
                receipts[original] = _receipt(answer.result, tx_hash)
            return replace(tracking, receipts=receipts)

        return self._parsed("track", reread)

    async def compose_hash_logs(
        self, *, contract: str, compose_hash: str, from_block: int, to_block: int
    ) -> Sequence[LogRef]:
        contract = _arg_address(contract, "contract")
        wanted = hex32(compose_hash)
        if from_block < 0 or to_block < from_block:
            raise ValueError(f"no blocks from {from_block} to {to_block}")
        chunks = math.ceil((to_block - from_block + 1) / LOG_CHUNK_BLOCKS)
        if chunks > MAX_LOG_CHUNKS:
            raise ValueError(
                f"blocks {from_block} to {to_block} are more than "
                f"{MAX_LOG_CHUNKS} x {LOG_CHUNK_BLOCKS} blocks"
            )
        calls = []
        for start in range(from_block, to_block + 1, LOG_CHUNK_BLOCKS):
            end = min(start + LOG_CHUNK_BLOCKS - 1, to_block)
            query = {
                "address": contract,
                "topics": [COMPOSE_HASH_ADDED_TOPIC],
                "fromBlock": hex(start),
                "toBlock": hex(end),
            }
            calls.append(_Call("eth_getLogs", [query]))
        answers = await self._exchange("compose_hash_logs", calls)

        def parse() -> Sequence[LogRef]:
            found: dict[tuple[int, str, str], LogRef] = {}
            for answer in answers:
                if answer.error is not None:
                    raise self._item_error("compose_hash_logs", "eth_getLogs", answer.error)
                if not isinstance(answer.result, list):
                    raise _Malformed("eth_getLogs did not answer a list")
                for item in answer.result:
                    log = _object(item, "a log")
                    if log.get("removed") is True or log.get("blockNumber") is None:
                        continue  # undone by a reorg, or pending
                    topics = log.get("topics")
                    if (
                        not isinstance(topics, list)
                        or not topics
                        or _hash(topics[0], "a log topic") != COMPOSE_HASH_ADDED_TOPIC
                        or _address(log.get("address"), "a log's address").lower() != contract
                        or _data(log.get("data"), "a log's data") != wanted
                    ):
                        continue  # an RPC that answers more than it was asked
                    ref = LogRef(
                        tx_hash=_hash(log.get("transactionHash"), "a log's transaction hash"),
                        block_number=_quantity(log.get("blockNumber"), "a log's block number"),
                        block_hash=_hash(log.get("blockHash"), "a log's block hash"),
                    )
                    if from_block <= ref.block_number <= to_block:
                        found[(ref.block_number, ref.block_hash, ref.tx_hash)] = ref
            return [found[key] for key in sorted(found)]

        return self._parsed("compose_hash_logs", parse)

    async def replay(self, *, sender: str, to: str, data: str, block_number: int) -> str | None:
        call = {
            "from": _arg_address(sender, "sender"),
            "to": _arg_address(to, "to"),
            "data": _arg_hex(data, "data"),
        }
        if block_number < 0:
            raise ValueError(f"block {block_number} does not exist")
        (answer,) = await self._exchange("replay", [_Call("eth_call", [call, hex(block_number)])])
        if answer.error is not None:
            reverted = revert_data(answer.error.code, answer.error.message, answer.error.data)
            if reverted is None:
                raise self._item_error("replay", "eth_call", answer.error)
            return reverted

        def parse() -> None:
            _data(answer.result, "the call's result")  # any data: the call succeeded

        self._parsed("replay", parse)
        return None

    async def block_timestamp(self, number: int) -> int:
        if number < 0:
            raise ValueError(f"block {number} does not exist")
        (answer,) = await self._exchange(
            "block_timestamp", [_Call("eth_getBlockByNumber", [hex(number), False])]
        )
        if answer.error is not None:
            raise self._item_error("block_timestamp", "eth_getBlockByNumber", answer.error)
        if answer.result is None:
            raise RetryLater(
                f"chain RPC {self.endpoint} does not know block {number} yet", reason=Reason.CHAIN_UNAVAILABLE
            )

        def parse() -> int:
            head = _head(answer.result)
            if head.number != number:
                raise _Malformed(f"block {number} was answered with block {head.number}")
            return head.timestamp

        return self._parsed("block_timestamp", parse)

    # -- answers ----------------------------------------------------------------------------------

    def _parsed(self, operation: str, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except _Malformed as exc:
            reason = str(exc)
        error = RetryLater(
            f"chain RPC {self.endpoint} gave a malformed answer to {operation}: {reason}",
            reason=Reason.CHAIN_UNAVAILABLE,
        )
        raise error

    def _item_error(self, operation: str, what: str, error: _NodeError) -> RetryLater:
        return RetryLater(
            f"chain RPC {self.endpoint} could not answer {what} during {operation}: "
            f"{node_text(error.message, self._redact)}",
            reason=Reason.CHAIN_UNAVAILABLE,
        )

    def _required(self, operation: str, key: str, answers: Mapping[str, _Answer]) -> Any:
        answer = answers[key]
        if answer.error is not None:
            raise self._item_error(operation, key, answer.error)
        return answer.result

    def _contract_view(self, key: str, answers: Mapping[str, _Answer], contract: str, chain_id: int) -> Any:
        """A view of the app contract; no data or a revert means no DstackApp at that address here."""
        answer = answers[key]
        missing = answer.error is None and answer.result in ("0x", "0x0")
        reverted = answer.error is not None and (
            revert_data(answer.error.code, answer.error.message, answer.error.data) is not None
        )
        if missing or reverted:
            raise Permanent(
                f"no DstackApp contract answers {key} at {to_checksum_address(contract)} on chain {chain_id} "
                f"(the chain of RPC {self.endpoint}): check the RPC's chain and the app id",
                reason=Reason.WRONG_CHAIN,
            )
        return self._required("survey", key, answers)

    @staticmethod
    def _optional_quantity(answer: _Answer) -> int | None:
        if answer.error is not None or answer.result is None:
            return None
        try:
            return _quantity(answer.result, "a fee")
        except _Malformed:
            return None

    # -- the wire ---------------------------------------------------------------------------------

    async def _exchange(self, operation: str, calls: Sequence[_Call]) -> list[_Answer]:
        """One HTTP request carrying ``calls`` (a batch when more than one); their answers in order."""
        ids = [next(self._ids) for _ in calls]
        payload = [
            {"jsonrpc": "2.0", "id": call_id, "method": call.method, "params": call.params}
            for call_id, call in zip(ids, calls, strict=True)
        ]
        body = json.dumps(payload if len(payload) > 1 else payload[0], separators=(",", ":")).encode()
        started = time.monotonic()
        answered = False
        try:
            status, retry_after, data = await self._post(operation, body)
            answers = self._envelope(operation, status, retry_after, data, ids, batch=len(payload) > 1)
            answered = True
            return answers
        finally:
            seconds = time.monotonic() - started
            logger.debug(
                "chain RPC %s: %s (%d calls) in %.3fs%s",
                self.endpoint,
                operation,
                len(calls),
                seconds,
                "" if answered else ", failed",
            )
            if self._observer is not None:
                try:
                    self._observer(operation, seconds, answered)
                except Exception as exc:  # a metric must never fail a call
                    logger.debug("chain RPC observer failed: %s", type(exc).__name__)

    def _envelope(
        self,
        operation: str,
        status: int,
        retry_after: str | None,
        data: bytes,
        ids: list[int],
        *,
        batch: bool,
    ) -> list[_Answer]:
        if status == 429:
            raise RetryLater(
                f"chain RPC {self.endpoint} is rate limiting (HTTP 429) during {operation}",
                reason=Reason.CHAIN_UNAVAILABLE,
                retry_after=retry_after_seconds(retry_after),
            )
        if status in (408, 425):
            raise RetryLater(
                f"chain RPC {self.endpoint} answered HTTP {status} during {operation}",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        if not 200 <= status < 300:
            if status == 400 or status >= 500:
                try:
                    return self._answers(operation, data, ids, batch=batch)
                except (_Malformed, SyncError):
                    pass  # not a JSON-RPC answer: the status speaks
            if status >= 500:
                raise RetryLater(
                    f"chain RPC {self.endpoint} answered HTTP {status} during {operation}",
                    reason=Reason.CHAIN_UNAVAILABLE,
                )
            raise Permanent(
                f"chain RPC {self.endpoint} refused {operation} with HTTP {status}: check the RPC URL and "
                "the key it carries",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        try:
            return self._answers(operation, data, ids, batch=batch)
        except _Malformed as exc:
            reason = str(exc)
        error = RetryLater(
            f"chain RPC {self.endpoint} gave a malformed answer to {operation}: {reason}",
            reason=Reason.CHAIN_UNAVAILABLE,
        )
        raise error

    def _answers(self, operation: str, data: bytes, ids: list[int], *, batch: bool) -> list[_Answer]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed("the body is not UTF-8") from None
        if not _shallow(text):
            raise _Malformed("the body nests too deep")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            raise _Malformed("the body is not JSON") from None
        if batch and isinstance(document, dict) and document.get("error") is not None:
            error = _node_error(document["error"])
            raise RetryLater(
                f"chain RPC {self.endpoint} refused a batch of {len(ids)} calls during {operation}: "
                f"{node_text(error.message, self._redact)}",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        items = document if batch else [document]
        if not isinstance(items, list):
            raise _Malformed("a batch was not answered with a list")
        by_id: dict[int, _Answer] = {}
        stray: list[_NodeError] = []  # errors answering no call of ours, e.g. id null: "batch too large"
        wanted = set(ids)
        for element in items:
            item = _object(element, "an answer")
            item_id = item.get("id")
            if isinstance(item_id, str) and item_id.isdigit():
                item_id = int(item_id)
            if not isinstance(item_id, int) or isinstance(item_id, bool) or item_id not in wanted:
                if item.get("error") is not None:
                    stray.append(_node_error(item["error"]))
                continue
            if item_id in by_id:
                raise _Malformed(f"call {item_id} was answered twice")
            if item.get("error") is not None:
                by_id[item_id] = _Answer(error=_node_error(item["error"]))
            elif "result" in item:
                by_id[item_id] = _Answer(result=item["result"])
            else:
                raise _Malformed("an answer has neither a result nor an error")
        missing = [call_id for call_id in ids if call_id not in by_id]
        if missing and stray:
            raise RetryLater(
                f"chain RPC {self.endpoint} refused {operation} ({len(missing)} of {len(ids)} calls "
                f"unanswered): {node_text(stray[0].message, self._redact)}",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        if missing:
            raise _Malformed(f"{len(missing)} of {len(ids)} calls were not answered")
        return [by_id[call_id] for call_id in ids]

    async def _post(self, operation: str, body: bytes) -> tuple[int, str | None, bytes]:
        """POST within the timeout, retrying once at once a connection the server reset."""
        session = self._open_session()
        self._in_flight += 1
        error: SyncError
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                try:
                    return await self._post_once(session, body)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if not _is_reset(exc):
                        raise
                await asyncio.sleep(_RESET_RETRY_DELAY)
                return await self._post_once(session, body)
        except TimeoutError:
            error = RetryLater(
                f"chain RPC {self.endpoint} did not answer {operation} within "
                f"{self._settings.request_timeout:g}s",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        except _TooLarge:
            error = RetryLater(
                f"chain RPC {self.endpoint} answered {operation} with more than "
                f"{self._settings.max_response_bytes} bytes",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        except (aiohttp.ClientError, OSError) as exc:
            # The library's text may quote the URL: only the type is kept.
            error = RetryLater(
                f"chain RPC {self.endpoint} unreachable during {operation} ({type(exc).__name__})",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        finally:
            self._in_flight -= 1
            if self._retired and self._in_flight == 0:
                await self._close_session()
        raise error from None

    async def _post_once(self, session: aiohttp.ClientSession, body: bytes) -> tuple[int, str | None, bytes]:
        limit = self._settings.max_response_bytes
        proxy = self._proxy
        async with session.post(
            self._url.reveal(),
            data=body,
            allow_redirects=False,
            headers=self._proxy_request_headers or None,
            proxy=proxy.url if proxy is not None else None,
            proxy_headers=proxy.headers if proxy is not None else None,
        ) as response:
            if response.status != 200 and response.status not in (400,) and response.status < 500:
                return response.status, response.headers.get("Retry-After"), b""
            if response.content_length is not None and response.content_length > limit:
                raise _TooLarge
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise _TooLarge
                chunks.append(chunk)
            return response.status, response.headers.get("Retry-After"), b"".join(chunks)

    # -- the session ------------------------------------------------------------------------------

    def _open_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session belongs to one event loop; one left on another loop cannot be closed here.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._settings.connections_per_client, keepalive_timeout=30.0
                ),
                headers={
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "User-Agent": USER_AGENT,
                },
                trust_env=False,  # the proxy was read once (domain.proxy); netrc is not consulted
                raise_for_status=False,
            )
            self._session_loop = loop
        return self._session

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            try:
                await session.close()
            except Exception as exc:  # closing must not fail a call or a shutdown
                logger.debug("closing a chain RPC session failed: %s", type(exc).__name__)

    def retire(self) -> Coroutine[Any, Any, None] | None:
        """No longer cached: close the session now if idle (the returned coroutine), else after the
        last call in flight. A retired client still works; it just keeps no connections."""
        self._retired = True
        if self._in_flight == 0 and self._session is not None:
            return self._close_session()
        return None

    async def aclose(self) -> None:
        closing = self.retire()
        if closing is not None:
            await closing


def _url_secrets(url: str) -> list[str]:
    """Parts of a URL a node might echo alone: query values and user info (the Redactor knows the
    path's segments and the query as a whole)."""
    try:
        parts = urlsplit(url)
        values = [value for _, value in parse_qsl(parts.query)] + [parts.username or "", parts.password or ""]
    except ValueError:
        return []
    return [value for value in values if len(value) >= 8]


def _node_error(value: object) -> _NodeError:
    if not isinstance(value, dict):
        return _NodeError(code=None, message=value if isinstance(value, str) else "an error", data=None)
    message = value.get("message")
    return _NodeError(
        code=value.get("code"),
        message=message if isinstance(message, str) else "an error without a message",
        data=value.get("data"),
    )


def _is_reset(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return (
        isinstance(exc, aiohttp.ClientOSError)
        and not isinstance(exc, aiohttp.ClientConnectorError)
        and (exc.errno in _RESET_ERRNOS)
    )


# -- the connector ----------------------------------------------------------------------------------


class Web3ChainConnector:
    """``ChainConnector``: one :class:`JsonRpcChainClient` per RPC URL, the last 64 used kept."""

    def __init__(self, settings: ChainRpcSettings | None = None, *, observer: Observer | None = None) -> None:
        self.settings = settings or ChainRpcSettings()
        self._observer = observer
        self._clients: OrderedDict[str, JsonRpcChainClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._clients)} clients>"

    def __len__(self) -> int:
        return len(self._clients)

    def connect(self, rpc_url: Secret) -> JsonRpcChainClient:
        url = rpc_url.reveal().strip()
        client = self._clients.get(url)
        if client is not None:
            self._clients.move_to_end(url)
            return client
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            raise Permanent(
                f"the chain RPC URL {redact_url(url)} is not an http:// or https:// URL",
                reason=Reason.INVALID_SPEC,
            )
        try:
            client = JsonRpcChainClient(Secret(url), self.settings, self._observer)
        except ValueError as exc:  # the proxy from the environment: the operator's setting, not the spec's
            raise RetryLater(str(exc), reason=Reason.CHAIN_UNAVAILABLE) from None
        self._clients[url] = client
        while len(self._clients) > self.settings.cache_size:
            _, evicted = self._clients.popitem(last=False)
            self._close_later(evicted)
        return client

    async def forget(self, rpc_url: Secret) -> None:
        """Drop the client of this URL and close its connections (its Secret changed)."""
        client = self._clients.pop(rpc_url.reveal().strip(), None)
        if client is not None:
            await client.aclose()

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            await client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, client: JsonRpcChainClient) -> None:
        closing = client.retire()
        if closing is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            closing.close()  # no loop: the session's own loop is gone, nothing can close it now
            return
        task = loop.create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


if TYPE_CHECKING:  # mypy checks that the adapter implements the ports

    def _implements(
        connector: Web3ChainConnector, client: JsonRpcChainClient
    ) -> tuple[ChainConnector, ChainClient]:
        return connector, client


__all__ = [
    "ChainRpcSettings",
    "JsonRpcChainClient",
    "Observer",
    "Web3ChainConnector",
    "retry_after_seconds",
]
