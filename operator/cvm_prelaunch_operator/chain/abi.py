"""The slice of dstack's ``DstackApp`` interface the registrar uses, written out by hand.

The operator talks to contracts it did not deploy (an upgradeable proxy on Ethereum or Base), so it
carries only the functions, the event and the error it needs; the selectors and the topic below are
checked against this ABI in the tests.
"""

from __future__ import annotations

from typing import Any, Final

ADD_COMPOSE_HASH_SELECTOR: Final = "0xdfc77223"
ALLOWED_COMPOSE_HASHES_SELECTOR: Final = "0x2f6622e5"
OWNER_SELECTOR: Final = "0x8da5cb5b"
# keccak256("OwnableUnauthorizedAccount(address)")[:4], OpenZeppelin v5's error for a non-owner.
OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR: Final = "0x118cdaa7"
# keccak256("ComposeHashAdded(bytes32)"); the hash itself is NOT indexed: it is the log data.
COMPOSE_HASH_ADDED_TOPIC: Final = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"
# keccak256("DeviceAdded(bytes32)"); the id is likewise in the log data.
DEVICE_ADDED_TOPIC: Final = "0x67fc71ab96fe3fa3c6f78e9a00e635d591b7333ce611c0380bc577aac702243b"


def _function(
    name: str, inputs: list[tuple[str, str]], outputs: list[str], mutability: str
) -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "inputs": [{"name": arg, "type": kind, "internalType": kind} for arg, kind in inputs],
        "outputs": [{"name": "", "type": kind, "internalType": kind} for kind in outputs],
        "stateMutability": mutability,
    }


DSTACK_APP_ABI: Final[list[dict[str, Any]]] = [
    _function("owner", [], ["address"], "view"),
    _function("allowedComposeHashes", [("composeHash", "bytes32")], ["bool"], "view"),
    _function("allowAnyDevice", [], ["bool"], "view"),
    _function("allowedDeviceIds", [("deviceId", "bytes32")], ["bool"], "view"),
    _function("addComposeHash", [("composeHash", "bytes32")], [], "nonpayable"),
    _function("addDevice", [("deviceId", "bytes32")], [], "nonpayable"),
    {
        "type": "event",
        "name": "ComposeHashAdded",
        "inputs": [{"name": "composeHash", "type": "bytes32", "indexed": False, "internalType": "bytes32"}],
        "anonymous": False,
    },
    {
        "type": "event",
        "name": "DeviceAdded",
        "inputs": [{"name": "deviceId", "type": "bytes32", "indexed": False, "internalType": "bytes32"}],
        "anonymous": False,
    },
    {
        "type": "error",
        "name": "OwnableUnauthorizedAccount",
        "inputs": [{"name": "account", "type": "address", "internalType": "address"}],
    },
]
