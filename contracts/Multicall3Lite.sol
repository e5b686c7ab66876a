// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Multicall3Lite
/// @notice A small batcher with the ABI of Multicall3's read helpers (aggregate, aggregate3 and
/// the block/chain getters), so that clients which batch their reads through Multicall3 at its
/// canonical address work against a local chain. Our own writing; it forwards no value.
contract Multicall3Lite {
    struct Call {
        address target;
        bytes callData;
    }

    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    /// @notice Call ``index`` of a batch failed and the batch did not allow it to.
    error CallFailed(uint256 index, bytes returnData);

    /// @notice Run every call; revert the whole batch when one fails.
    function aggregate(Call[] calldata calls)
        external
        payable
        returns (uint256 blockNumber, bytes[] memory returnData)
    {
        blockNumber = block.number;
        returnData = new bytes[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool success, bytes memory data) = calls[i].target.call(calls[i].callData);
            if (!success) {
                revert CallFailed(i, data);
            }
            returnData[i] = data;
        }
    }

    /// @notice Run every call; a failure reverts the batch only if that call forbids failure.
    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory returnData) {
        returnData = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool success, bytes memory data) = calls[i].target.call(calls[i].callData);
            if (!success && !calls[i].allowFailure) {
                revert CallFailed(i, data);
            }
            returnData[i] = Result(success, data);
        }
    }

    function getBlockNumber() external view returns (uint256) {
        return block.number;
    }

    function getChainId() external view returns (uint256) {
        return block.chainid;
    }

    function getEthBalance(address account) external view returns (uint256) {
        return account.balance;
    }

    function getCurrentBlockTimestamp() external view returns (uint256) {
        return block.timestamp;
    }
}
