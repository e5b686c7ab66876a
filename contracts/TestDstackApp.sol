// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title TestDstackApp
/// @notice A local stand-in for dstack's app contract (the contract whose address is a CVM's app
/// id). It offers the same external functions, events and owner error as the real one for
/// everything a client touches when it approves a new compose hash: the owner allow-lists compose
/// hashes and device ids; anyone reads the lists. Written for this project's tests: no proxy, no
/// upgrade path, one-step ownership.
contract TestDstackApp {
    /// @notice Whether a CVM whose app-compose.json has this sha256 may boot.
    mapping(bytes32 composeHash => bool allowed) public allowedComposeHashes;

    /// @notice Whether a CVM may boot on the TEE device with this id.
    mapping(bytes32 deviceId => bool allowed) public allowedDeviceIds;

    /// @notice When true the device list is not consulted.
    bool public allowAnyDevice;

    address private _owner;

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    // The hashes and ids are deliberately not indexed: clients read them from the log data.
    event ComposeHashAdded(bytes32 composeHash);
    event ComposeHashRemoved(bytes32 composeHash);
    event DeviceAdded(bytes32 deviceId);
    event DeviceRemoved(bytes32 deviceId);
    event AllowAnyDeviceSet(bool allowAny);

    /// @dev Same signature as OpenZeppelin v5 Ownable, so clients decode it the same way.
    error OwnableUnauthorizedAccount(address account);
    error OwnableInvalidOwner(address owner);

    modifier onlyOwner() {
        if (msg.sender != _owner) {
            revert OwnableUnauthorizedAccount(msg.sender);
        }
        _;
    }

    constructor(address initialOwner, bool initialAllowAnyDevice) {
        if (initialOwner == address(0)) {
            revert OwnableInvalidOwner(address(0));
        }
        _setOwner(initialOwner);
        if (initialAllowAnyDevice) {
            allowAnyDevice = true;
            emit AllowAnyDeviceSet(true);
        }
    }

    function owner() external view returns (address) {
        return _owner;
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) {
            revert OwnableInvalidOwner(address(0));
        }
        _setOwner(newOwner);
    }

    function addComposeHash(bytes32 composeHash) external onlyOwner {
        // Emitted even when the hash is already allowed: clients re-add to get a transaction hash.
        allowedComposeHashes[composeHash] = true;
        emit ComposeHashAdded(composeHash);
    }

    function removeComposeHash(bytes32 composeHash) external onlyOwner {
        allowedComposeHashes[composeHash] = false;
        emit ComposeHashRemoved(composeHash);
    }

    function addDevice(bytes32 deviceId) external onlyOwner {
        allowedDeviceIds[deviceId] = true;
        emit DeviceAdded(deviceId);
    }

    function removeDevice(bytes32 deviceId) external onlyOwner {
        allowedDeviceIds[deviceId] = false;
        emit DeviceRemoved(deviceId);
    }

    function setAllowAnyDevice(bool allowAny) external onlyOwner {
        allowAnyDevice = allowAny;
        emit AllowAnyDeviceSet(allowAny);
    }

    function _setOwner(address newOwner) private {
        address previousOwner = _owner;
        _owner = newOwner;
        emit OwnershipTransferred(previousOwner, newOwner);
    }
}
