"""The chain adapter: JSON-RPC questions (``rpc``) and local signing (``signer``) for the reconcile
core; the procedural registrar (``registrar``) until the typed-state core replaces it."""

from cvm_prelaunch_operator.chain.registrar import (
    ChainTransaction,
    Preflight,
    RegistrarSettings,
    SignerLocks,
    Web3Registrar,
)
from cvm_prelaunch_operator.chain.rpc import ChainRpcSettings, JsonRpcChainClient, Web3ChainConnector
from cvm_prelaunch_operator.chain.signer import EthAccountSigner

__all__ = [
    "ChainRpcSettings",
    "ChainTransaction",
    "EthAccountSigner",
    "JsonRpcChainClient",
    "Preflight",
    "RegistrarSettings",
    "SignerLocks",
    "Web3ChainConnector",
    "Web3Registrar",
]
