"""A local EVM chain: anvil on 127.0.0.1 with its ten funded dev accounts.

Used by the tests and the local environment as the stand-in for Ethereum or Base. anvil starts in
well under a second, so a test may start its own chain when it needs a chain id or a block time of
its own; most tests share the session chain of ``fixtures.chain``.

Real networks misbehave in ways the operator must survive; :class:`Anvil` plays them on demand
with thin wrappers over anvil's own RPC methods (checked against anvil 1.7.1): block times
(:data:`CHAIN_PROFILES`, :meth:`Anvil.set_interval_mining`, :meth:`Anvil.manual_mining`), a node
forgetting transactions (:meth:`Anvil.drop_transaction`), reorgs (:meth:`Anvil.reorg`,
:meth:`Anvil.rollback`) and base-fee spikes (:meth:`Anvil.set_next_base_fee`).
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import HTTPProvider, Web3

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.processes import ManagedProcess, free_port
from cvm_prelaunch_operator.domain.secrets import Secret

DEFAULT_CHAIN_ID = 31337
START_TIMEOUT_S = 10.0
# A bind race on the port picked by free_port() makes anvil exit at once; another port fixes it.
_START_ATTEMPTS = 3
_RPC_TIMEOUT_S = 10.0


class AnvilRpcError(RuntimeError):
    """anvil answered a JSON-RPC call with an error object."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.method = method
        self.code = error.get("code")
        self.data = error.get("data")
        super().__init__(f"{method}: {error.get('message', error)} (code {self.code})")


@dataclass(frozen=True)
class ChainProfile:
    """How fast a real network makes blocks, and its chain id, for the local chain to play."""

    name: str
    chain_id: int
    block_time: float | None  # None: automine, one block per transaction at once
    description: str


CHAIN_PROFILES: dict[str, ChainProfile] = {
    profile.name: profile
    for profile in (
        ChainProfile("instant", DEFAULT_CHAIN_ID, None, "anvil's chain id, every transaction mined at once"),
        ChainProfile("base", 8453, 2.0, "Base mainnet's chain id and its 2 s blocks"),
        ChainProfile("ethereum", 1, 12.0, "Ethereum mainnet's chain id and its 12 s slots"),
    )
}


def chain_profile(name: str) -> ChainProfile:
    try:
        return CHAIN_PROFILES[name]
    except KeyError:
        raise ValueError(f"no chain profile {name!r}; known: {', '.join(CHAIN_PROFILES)}") from None


@dataclass(frozen=True)
class DevAccount:
    """One of anvil's funded development accounts. The key is wrapped so no repr can print it."""

    address: ChecksumAddress
    private_key: Secret

    def local_account(self) -> LocalAccount:
        """An eth_account signer for this account."""
        account: LocalAccount = Account.from_key(self.private_key.reveal())
        return account


class Anvil:
    """An anvil process: ``with Anvil() as chain: chain.web3().eth.block_number``.

    ``block_time`` is seconds between blocks (fractions allowed at start); ``None`` mines one block
    per transaction (automine).
    """

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float | None = None,
        log_dir: Path | None = None,
    ) -> None:
        if block_time is not None and block_time <= 0:
            raise ValueError("block_time must be positive seconds, or None for automine")
        self.chain_id = chain_id
        self._block_time = block_time
        self._log_dir_given = log_dir
        self._workdir: Path | None = None
        self._process: ManagedProcess | None = None
        self._port: int | None = None
        self._accounts: tuple[DevAccount, ...] = ()
        self._request_ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Anvil:
        if self._process is not None:
            raise RuntimeError("anvil is already started")
        if not paths.anvil_bin().is_file():
            raise RuntimeError(f"no anvil at {paths.anvil_bin()}; install the npm packages (npm ci)")
        self._workdir = self._log_dir_given or Path(tempfile.mkdtemp(prefix="anvil-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        last_error: Exception | None = None
        for _attempt in range(_START_ATTEMPTS):
            try:
                self._start_once()
            except (RuntimeError, TimeoutError) as exc:
                last_error = exc
                self._stop_process()
                continue
            return self
        self._cleanup_workdir()
        raise RuntimeError(f"anvil did not start after {_START_ATTEMPTS} attempts") from last_error

    def _start_once(self) -> None:
        assert self._workdir is not None
        port = free_port()
        config_out = self._workdir / f"anvil-{port}.json"
        argv: list[str] = [
            str(paths.anvil_bin()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(self.chain_id),
            "--quiet",
            "--config-out",
            str(config_out),
        ]
        if self._block_time is not None:
            argv += ["--block-time", repr(float(self._block_time))]
        process = ManagedProcess("anvil", argv, log_path=self._workdir / f"anvil-{port}.log")
        self._process = process
        self._port = port
        process.start()
        process.wait_until(
            lambda: config_out.is_file() and self._rpc("eth_chainId") is not None,
            timeout=START_TIMEOUT_S,
            interval=0.02,
        )
        answered = int(self._rpc("eth_chainId"), 16)
        if answered != self.chain_id:
            raise RuntimeError(f"anvil answers chain id {answered}, expected {self.chain_id}")
        self._accounts = _read_accounts(config_out)

    def stop(self) -> None:
        """Stop the process (its whole process group) and remove the scratch directory."""
        self._stop_process()
        self._cleanup_workdir()

    def _stop_process(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        self._port = None

    def _cleanup_workdir(self) -> None:
        if self._workdir is not None and self._log_dir_given is None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._port is not None else "stopped"
        return f"Anvil(chain_id={self.chain_id}, block_time={self._block_time}, {state})"

    # -- what callers use ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("anvil is not running")
        return self._port

    @property
    def workdir(self) -> Path:
        """Where the log and the account list are (removed at stop unless ``log_dir`` was given)."""
        if self._workdir is None:
            raise RuntimeError("anvil is not running")
        return self._workdir

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accounts(self) -> tuple[DevAccount, ...]:
        """The ten funded dev accounts, in anvil's order (account 0 first)."""
        if not self._accounts:
            raise RuntimeError("anvil is not running")
        return self._accounts

    @property
    def block_time(self) -> float | None:
        """Seconds between blocks, or ``None`` when every transaction is mined at once."""
        return self._block_time

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def web3(self) -> Web3:
        """A synchronous web3 client for this chain."""
        return Web3(HTTPProvider(self.rpc_url, request_kwargs={"timeout": _RPC_TIMEOUT_S}))

    def rpc(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call; raises :class:`AnvilRpcError` on an error answer."""
        return self._rpc(method, *params)

    def mine(self, blocks: int = 1) -> None:
        if blocks < 1:
            raise ValueError("blocks must be at least 1")
        self._rpc("anvil_mine", hex(blocks))

    def block_number(self) -> int:
        return int(self._rpc("eth_blockNumber"), 16)

    def set_balance(self, address: str, wei: int) -> None:
        self._rpc("anvil_setBalance", Web3.to_checksum_address(address), hex(wei))

    def set_code(self, address: str, code: bytes | str) -> None:
        """Place runtime bytecode at an address (``anvil_setCode``)."""
        code_hex = code if isinstance(code, str) else "0x" + code.hex()
        if not code_hex.startswith("0x"):
            code_hex = "0x" + code_hex
        self._rpc("anvil_setCode", Web3.to_checksum_address(address), code_hex)

    def snapshot(self) -> str:
        """Save the chain state; returns the id :meth:`revert` takes."""
        snapshot_id: str = self._rpc("evm_snapshot")
        return snapshot_id

    def revert(self, snapshot_id: str) -> None:
        """Return to a snapshot. anvil forgets that snapshot (and later ones) afterwards."""
        if not self._rpc("evm_revert", snapshot_id):
            raise RuntimeError(f"anvil has no snapshot {snapshot_id}")

    # -- playing a real network ----------------------------------------------------------------------

    def set_automine(self, enabled: bool) -> None:
        """Mine every transaction at once (True), or leave transactions pending until a block is mined
        by :meth:`mine` or by interval mining (False)."""
        self._rpc("evm_setAutomine", enabled)
        if enabled:
            self._block_time = None

    def set_interval_mining(self, seconds: int) -> None:
        """A block every ``seconds`` (whole seconds, as anvil's RPC takes them), empty or not; ``0``
        stops interval mining (then blocks come only from :meth:`mine`, or automine if it is on)."""
        if seconds < 0:
            raise ValueError("seconds must be 0 or more")
        self._rpc("evm_setIntervalMining", seconds)
        self._block_time = float(seconds) if seconds else None

    @contextmanager
    def manual_mining(self) -> Iterator[None]:
        """Transactions wait in the pool until :meth:`mine`; the previous mining mode comes back after."""
        automine = bool(self._rpc("anvil_getAutomine"))
        interval = int(self._rpc("anvil_getIntervalMining") or 0)
        block_time = self._block_time
        self._rpc("evm_setAutomine", False)
        self._rpc("evm_setIntervalMining", 0)
        try:
            yield
        finally:
            if interval:
                self._rpc("evm_setIntervalMining", interval)
            self._rpc("evm_setAutomine", automine)
            self._block_time = block_time

    def wait_for_receipt(self, tx_hash: str, timeout: float = 10.0) -> dict[str, Any]:
        """The receipt of a transaction, once mined. Even automine mines in the background: a receipt
        asked for right after ``eth_sendRawTransaction`` may not be there yet."""
        deadline = time.monotonic() + timeout
        while True:
            receipt: dict[str, Any] | None = self._rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return receipt
            if time.monotonic() > deadline:
                raise TimeoutError(f"transaction {tx_hash} not mined within {timeout:g}s")
            time.sleep(0.005)

    def txpool_status(self) -> tuple[int, int]:
        """(pending, queued) transactions in anvil's pool."""
        status = self._rpc("txpool_status")
        return int(status["pending"], 16), int(status["queued"], 16)

    def drop_transaction(self, tx_hash: str) -> bool:
        """Forget a pending transaction, as a node that restarted or evicted it does; True if it was
        in the pool. Afterwards the node knows nothing of it (``eth_getTransactionByHash`` is null)."""
        dropped = self._rpc("anvil_dropTransaction", tx_hash)
        return dropped is not None

    def drop_all_transactions(self) -> None:
        """Empty the pool."""
        self._rpc("anvil_dropAllTransactions")

    def reorg(self, depth: int, transactions: Sequence[tuple[str | Mapping[str, Any], int]] = ()) -> None:
        """Replace the last ``depth`` blocks with as many new ones (``anvil_reorg``): the head keeps its
        height, every transaction of the old blocks is gone (receipts and all; anvil does not return
        them to the pool) and the new blocks carry ``transactions``: pairs of a signed transaction
        (``0x`` hex) or a transaction request (an unlocked dev account's) and the index of the new
        block (0 is the oldest) it goes in. Re-including a removed transaction moves its receipt."""
        if not 1 <= depth <= self.block_number():
            raise ValueError(f"depth must be between 1 and the head's height, not {depth}")
        pairs: list[list[Any]] = []
        for tx, index in transactions:
            if not 0 <= index < depth:
                raise ValueError(f"block index {index} is not among the {depth} new blocks")
            pairs.append([tx if isinstance(tx, str) else dict(tx), index])
        self._rpc("anvil_reorg", depth, pairs)

    def rollback(self, depth: int = 1) -> None:
        """Remove the last ``depth`` blocks (``anvil_rollback``): the head goes back, and their
        transactions are gone."""
        if not 1 <= depth <= self.block_number():
            raise ValueError(f"depth must be between 1 and the head's height, not {depth}")
        self._rpc("anvil_rollback", depth)

    def set_next_base_fee(self, wei: int) -> None:
        """The next block's base fee (a spike, or a fall). anvil 1.7.1 refuses new transactions whose
        fee cap is below it, and a pending one whose fee cap is below it is not mined: anvil then
        evicts it from its pool (geth would keep it)."""
        if wei < 0:
            raise ValueError("wei must not be negative")
        self._rpc("anvil_setNextBlockBaseFeePerGas", hex(wei))

    def base_fee(self) -> int:
        """The latest block's base fee."""
        block = self._rpc("eth_getBlockByNumber", "latest", False)
        return int(block["baseFeePerGas"], 16)

    def set_block_time(self, seconds: float | None) -> None:
        """Switch to interval mining every ``seconds`` (whole seconds: anvil's RPC takes integers)
        or, with ``None``, back to automine."""
        if seconds is None:
            self._rpc("evm_setAutomine", True)
            self._block_time = None
            return
        if seconds < 1 or not math.isclose(seconds, round(seconds)):
            raise ValueError("anvil changes the block time only in whole seconds (>= 1) at run time")
        self._rpc("evm_setIntervalMining", round(seconds))
        self._block_time = float(round(seconds))

    # -- internals -------------------------------------------------------------------------------

    def _rpc(self, method: str, *params: Any) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._request_ids), "method": method, "params": list(params)}
        )
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_RPC_TIMEOUT_S)
        try:
            connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
        finally:
            connection.close()
        if "error" in payload:
            raise AnvilRpcError(method, payload["error"])
        return payload.get("result")


def _read_accounts(config_out: Path) -> tuple[DevAccount, ...]:
    # The file can be seen half-written for a moment right after start; retry briefly.
    deadline = time.monotonic() + 2.0
    while True:
        try:
            config = json.loads(config_out.read_text())
            addresses: list[str] = config["available_accounts"]
            keys: list[str] = config["private_keys"]
            break
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise RuntimeError("anvil wrote no readable --config-out file") from None
            time.sleep(0.02)
    return tuple(
        DevAccount(address=Web3.to_checksum_address(address), private_key=Secret(key))
        for address, key in zip(addresses, keys, strict=True)
    )
