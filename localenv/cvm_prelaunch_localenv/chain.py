"""A local EVM chain: anvil on 127.0.0.1 with its ten funded dev accounts.

Used by the tests and the local environment as the stand-in for Ethereum or Base. anvil starts in
well under a second, so a test may start its own chain when it needs a chain id or a block time of
its own; most tests share the session chain of ``fixtures.chain``.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import shutil
import tempfile
import time
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
