"""The chain adapter: JSON-RPC questions (``rpc``) and local signing (``signer``) for the reconcile core."""

from cvm_prelaunch_operator.chain.rpc import ChainRpcSettings, JsonRpcChainClient, Web3ChainConnector
from cvm_prelaunch_operator.chain.signer import EthAccountSigner

__all__ = ["ChainRpcSettings", "EthAccountSigner", "JsonRpcChainClient", "Web3ChainConnector"]
