"""The vocabulary of conditions: one reason names one situation a user can act on."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Ready=True
    SYNCED = "Synced"
    # Waiting for something outside the operator, not an error.
    AWAITING_APPROVAL = "AwaitingApproval"
    AWAITING_TRANSACTION = "AwaitingTransaction"
    SUSPENDED = "Suspended"
    DRIFTED = "Drifted"
    # Work under way.
    PROGRESSING = "Progressing"
    UPLOADING = "Uploading"
    REGISTERING_ON_CHAIN = "RegisteringOnChain"
    AWAITING_CONFIRMATIONS = "AwaitingConfirmations"
    FEE_CEILING_REACHED = "FeeCeilingReached"  # waiting for fees to fit under the user's ceiling
    APPLYING = "Applying"
    # The cluster.
    KUBERNETES_API_ERROR = "KubernetesApiError"
    # Inputs in the cluster.
    CONFIGMAP_NOT_FOUND = "ConfigMapNotFound"
    KEY_NOT_FOUND = "KeyNotFound"
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a reason, not a password)
    INVALID_SPEC = "InvalidSpec"
    # Phala Cloud.
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    CVM_NOT_FOUND = "CvmNotFound"
    INVALID_SCRIPT = "InvalidScript"
    REMOTE_REJECTED = "RemoteRejected"
    REMOTE_UNAVAILABLE = "RemoteUnavailable"
    APPLY_FAILED = "ApplyFailed"
    OPERATION_TIMED_OUT = "OperationTimedOut"
    COMPOSE_HASH_MISMATCH = "ComposeHashMismatch"
    COMPOSE_HASH_NOT_ALLOWED = "ComposeHashNotAllowed"
    REGISTRATION_REJECTED = "RegistrationRejected"
    # The chain.
    NOT_CONTRACT_OWNER = "NotContractOwner"
    INSUFFICIENT_FUNDS = "InsufficientFunds"
    WRONG_CHAIN = "WrongChain"
    DEVICE_NOT_ALLOWED = "DeviceNotAllowed"
    TRANSACTION_FAILED = "TransactionFailed"
    TRANSACTION_REVERTED = "TransactionReverted"
    CHAIN_UNAVAILABLE = "ChainUnavailable"
    INSECURE_RPC_URL = "InsecureRpcUrl"
