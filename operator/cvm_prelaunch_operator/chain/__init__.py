"""The chain adapter: registers compose hashes on a dstack app contract with web3.py."""

from cvm_prelaunch_operator.chain.registrar import (
    ChainTransaction,
    Preflight,
    RegistrarSettings,
    SignerLocks,
    Web3Registrar,
)

__all__ = ["ChainTransaction", "Preflight", "RegistrarSettings", "SignerLocks", "Web3Registrar"]
