"""The project's test contracts: compile them with solc-js, cache the result, deploy them.

``contracts/*.sol`` is compiled in one go by ``contracts/compile.mjs`` (the npm package ``solc``,
no compiler download). The ABI and bytecode are cached under
``<cache_root>/contracts/<sha256 of sources, settings and solc version>.json``, so only the first
run after a source change pays for the compiler (a few seconds).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import HTTPProvider, Web3
from web3.contract import Contract

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_operator.domain.secrets import Redactor, Secret, redact_url

APP_CONTRACT_NAME = "TestDstackApp"
MULTICALL3_CONTRACT_NAME = "Multicall3Lite"
# Where Multicall3 lives on every public chain; clients such as viem only look there.
MULTICALL3_ADDRESS: ChecksumAddress = Web3.to_checksum_address("0xcA11bde05977b3631167028862bE2a173976CA11")

COMPILE_TIMEOUT_S = 180.0
RECEIPT_TIMEOUT_S = 120.0

# Cancun: what both Ethereum and Base run, and what anvil's default hard fork includes.
_SOLC_SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}

ABI = list[dict[str, Any]]


@dataclass(frozen=True)
class CompiledContract:
    """One compiled contract: its ABI, creation bytecode and runtime bytecode (``0x`` hex)."""

    name: str
    abi: ABI
    bytecode: str
    runtime_bytecode: str


@dataclass(frozen=True)
class AppContract:
    """A deployed TestDstackApp and the dev account that owns it."""

    address: ChecksumAddress
    owner: DevAccount
    abi: ABI

    def contract(self, w3: Web3) -> Contract:
        return w3.eth.contract(address=self.address, abi=self.abi)


def contracts_dir() -> Path:
    return paths.repo_root() / "contracts"


def solc_version() -> str:
    """The version of the solc-js package in node_modules (read without starting node)."""
    package = json.loads((paths.node_modules() / "solc" / "package.json").read_text())
    version: str = package["version"]
    return version


def compiled_contract(name: str) -> CompiledContract:
    """A contract of ``contracts/``, by contract name (e.g. ``"TestDstackApp"``)."""
    contracts = _compile_all()
    try:
        return contracts[name]
    except KeyError:
        raise KeyError(f"no contract {name!r} in {contracts_dir()}; have {sorted(contracts)}") from None


def app_contract_abi() -> ABI:
    return compiled_contract(APP_CONTRACT_NAME).abi


def deploy_app_contract(
    rpc_url: str,
    owner_private_key: Secret | str,
    *,
    allow_any_device: bool = False,
    deployer_private_key: Secret | str | None = None,
) -> ChecksumAddress:
    """Deploy a TestDstackApp owned by the owner key's address; returns its checksummed address.

    The deployer (by default the owner) pays for and signs the deployment; the owner's nonce is
    untouched when a different deployer is given.
    """
    owner = _account(owner_private_key)
    deployer = _account(deployer_private_key) if deployer_private_key is not None else owner
    return _deploy(rpc_url, deployer, compiled_contract(APP_CONTRACT_NAME), owner.address, allow_any_device)


def install_multicall3(anvil: Anvil) -> ChecksumAddress:
    """Place Multicall3Lite's runtime code at Multicall3's canonical address; returns the address."""
    anvil.set_code(MULTICALL3_ADDRESS, compiled_contract(MULTICALL3_CONTRACT_NAME).runtime_bytecode)
    return MULTICALL3_ADDRESS


# -- deployment ------------------------------------------------------------------------------------


def _account(private_key: Secret | str) -> LocalAccount:
    key = private_key.reveal() if isinstance(private_key, Secret) else private_key
    account: LocalAccount = Account.from_key(key)
    return account


class DeploymentError(RuntimeError):
    """A deployment failed; the text names the RPC endpoint only in redacted form."""


def _deploy(rpc_url: str, deployer: LocalAccount, compiled: CompiledContract, *args: Any) -> ChecksumAddress:
    try:
        return _deploy_and_wait(rpc_url, deployer, compiled, *args)
    except DeploymentError:
        raise
    except Exception as exc:
        # Transport errors quote the URL, which may carry a provider key: scrub it, drop the cause.
        redact = Redactor([rpc_url])
        reason = f"{type(exc).__name__}: {redact(str(exc))}"
        message = f"deploying {compiled.name} on {redact_url(rpc_url)} failed: {reason}"
        raise DeploymentError(message) from None


def _deploy_and_wait(
    rpc_url: str, deployer: LocalAccount, compiled: CompiledContract, *args: Any
) -> ChecksumAddress:
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    factory = w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
    transaction = factory.constructor(*args).build_transaction(
        {
            "from": deployer.address,
            # "pending": several deployments may wait for the same block under interval mining.
            "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
            "chainId": w3.eth.chain_id,
        }
    )
    signed = deployer.sign_transaction(transaction)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S, poll_latency=0.05)
    address = receipt.get("contractAddress")
    if receipt["status"] != 1 or not address:
        raise DeploymentError(
            f"deploying {compiled.name} on {redact_url(rpc_url)} failed: transaction "
            f"{tx_hash.to_0x_hex()} has status {receipt['status']}"
        )
    return Web3.to_checksum_address(address)


# -- compilation -----------------------------------------------------------------------------------


@functools.cache
def _compile_all() -> dict[str, CompiledContract]:
    sources = {path.name: path.read_text() for path in sorted(contracts_dir().glob("*.sol"))}
    if not sources:
        raise RuntimeError(f"no Solidity sources in {contracts_dir()}")
    script = contracts_dir() / "compile.mjs"
    cache_file = paths.cache_root() / "contracts" / f"{_cache_key(sources, script)}.json"
    try:
        cached: dict[str, dict[str, Any]] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = _run_solc(sources, script)
        _write_atomically(cache_file, json.dumps(cached, sort_keys=True))
    return {name: CompiledContract(name=name, **fields) for name, fields in cached.items()}


def _cache_key(sources: dict[str, str], script: Path) -> str:
    digest = hashlib.sha256()
    for part in (solc_version(), script.read_text(), json.dumps(_SOLC_SETTINGS, sort_keys=True)):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, text in sorted(sources.items()):
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def _run_solc(sources: dict[str, str], script: Path) -> dict[str, dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; it runs the solc-js compiler")
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": _SOLC_SETTINGS,
    }
    completed = subprocess.run(
        [node, str(script)],
        input=json.dumps(standard_input).encode(),
        capture_output=True,
        timeout=COMPILE_TIMEOUT_S,
        cwd=contracts_dir(),
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"solc-js failed (exit {completed.returncode}):\n{completed.stderr.decode()}")
    output = json.loads(completed.stdout)["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("Solidity compile errors:\n" + "\n".join(e["formattedMessage"] for e in errors))
    compiled: dict[str, dict[str, Any]] = {}
    for file_contracts in output["contracts"].values():
        for name, artefact in file_contracts.items():
            if name in compiled:
                raise RuntimeError(f"contract name {name!r} is defined twice in {contracts_dir()}")
            compiled[name] = {
                "abi": artefact["abi"],
                "bytecode": "0x" + artefact["evm"]["bytecode"]["object"],
                "runtime_bytecode": "0x" + artefact["evm"]["deployedBytecode"]["object"],
            }
    return compiled


def _write_atomically(path: Path, text: str) -> None:
    # Parallel test sessions may compile at once: each writes a temp file and renames it in place.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
