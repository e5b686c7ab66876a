"""The small interfaces the reconcile core drives. Adapters implement them; the model test fakes them.

Every method raises only ``domain.errors.SyncError`` subclasses (``RetryLater``: try again later,
honouring ``retry_after``; ``Permanent``: nothing changes until an input does), with messages that
are safe to show: adapters redact secrets and cut what a remote side said before raising. The one
exception is ``NotLeader`` from a ``Fence``, which ends the pass without any further write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cvm_prelaunch_operator.domain.chain import (
    LogRef,
    SendResult,
    SignedTx,
    Survey,
    Tracking,
    UnsignedTx,
)
from cvm_prelaunch_operator.domain.models import CvmInfo, Operation, UpdateAccepted
from cvm_prelaunch_operator.domain.resource import ShellcheckLevel
from cvm_prelaunch_operator.domain.secrets import Secret

# -- Phala Cloud ------------------------------------------------------------------------------------


class PhalaCloud(Protocol):
    """Phala Cloud as seen with one API key."""

    async def get_cvm(self, cvm_id: str) -> CvmInfo: ...

    async def get_pre_launch_script(self, cvm_id: str) -> str: ...

    async def patch_pre_launch_script(
        self,
        cvm_id: str,
        script: bytes,
        *,
        compose_hash: str | None = None,
        transaction_hash: str | None = None,
    ) -> UpdateAccepted:
        """Phase 1 without the hash headers (raises ``RegistrationRequired`` on 465), Phase 2 with."""
        ...

    async def get_app_compose(self, cvm_id: str) -> str:
        """The exact app-compose text the CVM runs (attestation ``tcb_info.app_compose``)."""
        ...

    async def find_operation(self, cvm_id: str, correlation_id: str) -> Operation | None:
        """The operation with this correlation id, or None when the CVM's recent operations lack it.
        Its ``status`` is the server's word, verbatim (``completed``, ``failed``, ``in_progress`` or
        anything else)."""
        ...


class PhalaCloudFactory(Protocol):
    def for_api_key(self, api_key: Secret) -> PhalaCloud: ...


# -- the chain ------------------------------------------------------------------------------------


class ChainClient(Protocol):
    """One JSON-RPC endpoint, as untrusted as any input.

    Each method is one round trip (a JSON-RPC batch counts as one). Transport failures, HTTP 429/5xx and
    node errors that mean "later" raise ``RetryLater`` with reason ``ChainUnavailable`` (and the 429's
    ``Retry-After`` as ``retry_after``); refusals raise ``Permanent``. Node text in messages is redacted
    and cut to 256 characters. The adapter checks what it can check alone: a receipt or transaction is
    returned only when its hash is the one asked for.
    """

    async def survey(
        self, *, contract: str, compose_hash: str, device_id: str | None, signer: str, call_data: str
    ) -> Survey:
        """Chain id, head, the contract's view of the hash, device and owner, the signer's balance and
        nonces, a gas estimate of ``call_data`` from ``signer`` and the fee suggestions."""
        ...

    async def send(self, raw: str) -> SendResult:
        """``eth_sendRawTransaction``. The outcomes the core resolves itself are returned, not raised."""
        ...

    async def track(self, tx_hashes: Sequence[str], *, sender: str | None) -> Tracking:
        """Chain id, head, the receipt and the transaction view of each hash, and the sender's nonces at
        'latest' and 'pending' (when a sender is given). A receipt reported absent was read after the
        nonce: an absent receipt next to a nonce used past the transaction means it was replaced."""
        ...

    async def compose_hash_logs(
        self, *, contract: str, compose_hash: str, from_block: int, to_block: int
    ) -> Sequence[LogRef]:
        """``ComposeHashAdded(compose_hash)`` logs of ``contract`` in the block range (canonical chain)."""
        ...

    async def replay(self, *, sender: str, to: str, data: str, block_number: int) -> str | None:
        """``eth_call`` of a transaction at a block: its revert data (``0x...``), or None if it succeeds."""
        ...

    async def block_timestamp(self, number: int) -> int:
        """A block's timestamp (to learn the chain's block interval)."""
        ...


class ChainConnector(Protocol):
    def connect(self, rpc_url: Secret) -> ChainClient:
        """A client for the URL (kept in a bounded cache). Connects lazily: nothing is sent here."""
        ...


class Signer(Protocol):
    """Signs transactions with a private key held in a Secret; never returns or logs the key."""

    def address(self, key: Secret) -> str:
        """The key's address (checksummed); ``Permanent`` (``InvalidSpec``) for an invalid key."""
        ...

    def sign(self, key: Secret, tx: UnsignedTx) -> SignedTx: ...

    def tx_hash(self, raw: str) -> str:
        """keccak256 of signed bytes: what a receipt's transaction hash must be."""
        ...


# -- the script gate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptReport:
    """What the checks found: nothing (ok), or the first problems with line numbers."""

    ok: bool
    problems: tuple[str, ...] = ()
    checker: str = ""  # e.g. "sh -n", "bash -n", "shellcheck"


class ScriptChecker(Protocol):
    async def check(self, script: bytes, *, shellcheck: ShellcheckLevel) -> ScriptReport:
        """Syntax (``bash -n``/``sh -n`` by the shebang; ``sh`` without one), UTF-8, size within Phala's
        limit, and shellcheck at the given level. Bounded in time; never raises for a bad script."""
        ...


class AcceptAllScripts:
    """A ``ScriptChecker`` that checks nothing (unit tests of other steps)."""

    async def check(self, script: bytes, *, shellcheck: ShellcheckLevel) -> ScriptReport:
        return ScriptReport(ok=True)


# -- leadership -------------------------------------------------------------------------------------


class Fence(Protocol):
    def check(self) -> None:
        """Raise ``domain.errors.NotLeader`` unless this process may still act (holds a valid Lease).
        Called before every side effect: each PATCH, each broadcast, each status write."""
        ...


class AlwaysLeader:
    def check(self) -> None:
        return None


# -- observations (metrics) -------------------------------------------------------------------------


class Observer(Protocol):
    def transaction(self, outcome: str) -> None:
        """A registration ended: ``registered``, ``reused``, ``verified``, ``replaced``, ``failed``."""
        ...

    def drift(self) -> None: ...

    def signer_balance(self, chain_id: int, address: str, wei: int) -> None: ...


class NoObserver:
    def transaction(self, outcome: str) -> None:
        return None

    def drift(self) -> None:
        return None

    def signer_balance(self, chain_id: int, address: str, wei: int) -> None:
        return None


# -- the cluster ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptSource:
    """The desired script, read from the ConfigMap key the resource names."""

    data: bytes
    config_map_name: str
    uid: str
    resource_version: str


class StatusConflict(Exception):
    """The resource changed since it was read; the write was refused and must be re-planned."""


class ResourceIO(Protocol):
    """The cluster as one reconcile of one resource sees it (implemented over the Kubernetes API)."""

    async def read_script(self, config_map: str, key: str) -> ScriptSource:
        """Raises ``Permanent`` with CONFIGMAP_NOT_FOUND or KEY_NOT_FOUND."""
        ...

    async def read_secret(self, name: str, key: str) -> Secret:
        """Raises ``Permanent`` with SECRET_NOT_FOUND."""
        ...

    async def secret_version(self, name: str) -> str | None:
        """The Secret's resourceVersion (None if absent), from the watch when it knows: part of what a
        stalled resource waits on."""
        ...

    async def patch_status(self, patch: dict[str, object]) -> None:
        """Merge-patch the status, guarded by the resourceVersion last read or written; raises
        ``StatusConflict`` when someone else changed the resource in between."""
        ...

    async def record_event(self, type_: str, reason: str, message: str) -> None:
        """Post an Event without making the pass wait for it (best effort)."""
        ...
