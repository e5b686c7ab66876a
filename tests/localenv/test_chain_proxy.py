"""The JSON-RPC proxy for tests: it counts what passes and misbehaves exactly as told."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest
from eth_account.datastructures import SignedTransaction

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy

GWEI = 10**9


def post(proxy: JsonRpcProxy, payload: Any, *, path: str | None = None) -> tuple[int, dict[str, str], Any]:
    url = path if path is not None else "/" + proxy.url.split("/", 3)[3]
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request(
            "POST", url, body=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    try:
        return response.status, headers, json.loads(body)
    except ValueError:
        return response.status, headers, body


def call(method: str, *params: Any, call_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": list(params)}


def transfer(anvil: Anvil, nonce_offset: int = 0, sender: int = 8) -> SignedTransaction:
    account = anvil.accounts[sender]
    nonce = anvil.web3().eth.get_transaction_count(account.address, "pending") + nonce_offset
    signed: SignedTransaction = account.local_account().sign_transaction(
        {
            "type": 2,
            "chainId": anvil.chain_id,
            "nonce": nonce,
            "to": anvil.accounts[9].address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 100 * GWEI,
            "maxPriorityFeePerGas": GWEI,
        }
    )
    return signed


def test_counts_requests_and_calls_of_batches_too(anvil_proxy: JsonRpcProxy) -> None:
    status, _, single = post(anvil_proxy, call("eth_chainId"))
    _, _, batch = post(anvil_proxy, [call("eth_chainId", call_id=7), call("eth_blockNumber", call_id=8)])

    assert status == 200
    assert single == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}
    assert [answer["id"] for answer in batch] == [7, 8]
    assert anvil_proxy.http_requests == 2
    assert anvil_proxy.calls == {"eth_chainId": 2, "eth_blockNumber": 1}
    assert anvil_proxy.requests == [("eth_chainId",), ("eth_chainId", "eth_blockNumber")]
    assert anvil_proxy.count("eth_blockNumber") == 1
    anvil_proxy.reset_counts()
    assert (anvil_proxy.http_requests, anvil_proxy.requests, anvil_proxy.count("eth_chainId")) == (0, [], 0)


def test_answers_estimate_gas_itself_in_batches_too(anvil: Anvil, anvil_proxy: JsonRpcProxy) -> None:
    estimate = call("eth_estimateGas", {"from": anvil.accounts[0].address, "to": anvil.accounts[1].address})
    anvil_proxy.estimate_gas(123_456)

    _, _, answers = post(anvil_proxy, [call("eth_chainId", call_id=1), {**estimate, "id": 2}])
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"},
        {"jsonrpc": "2.0", "id": 2, "result": hex(123_456)},
    ]
    anvil_proxy.estimate_gas(None)
    assert post(anvil_proxy, estimate)[2]["result"] == hex(21_000)  # anvil's own answer again


def test_held_transactions_reach_the_chain_only_when_released(
    anvil: Anvil, anvil_proxy: JsonRpcProxy
) -> None:
    anvil_proxy.hold_sends()
    first = transfer(anvil)
    raw = "0x" + bytes(first.raw_transaction).hex()
    tx_hash = "0x" + bytes(first.hash).hex()

    _, _, answer = post(anvil_proxy, call("eth_sendRawTransaction", raw))

    assert answer["result"] == tx_hash  # what a node that accepted it says
    assert anvil.rpc("eth_getTransactionByHash", tx_hash) is None
    assert anvil_proxy.held == [raw]
    (released,) = anvil_proxy.release()
    assert released["result"] == tx_hash
    assert anvil.wait_for_receipt(tx_hash)["status"] == "0x1"  # automined
    assert anvil_proxy.held == []

    second = transfer(anvil)
    post(anvil_proxy, call("eth_sendRawTransaction", "0x" + bytes(second.raw_transaction).hex()))
    assert anvil_proxy.drop_held() == 1
    assert anvil_proxy.release() == []
    assert anvil.rpc("eth_getTransactionByHash", "0x" + bytes(second.hash).hex()) is None


def test_rate_limits_the_next_requests_with_retry_after(anvil_proxy: JsonRpcProxy) -> None:
    anvil_proxy.rate_limit(2, "5")

    first, second, third = (post(anvil_proxy, call("eth_chainId")) for _ in range(3))

    assert (first[0], first[1]["retry-after"]) == (429, "5")
    assert second[0] == 429
    assert third[0] == 200
    assert anvil_proxy.http_requests == 3
    anvil_proxy.rate_limit(1, None)
    status, headers, _ = post(anvil_proxy, call("eth_chainId"))
    assert status == 429 and "retry-after" not in headers


def test_rewrites_the_hash_of_a_receipt(anvil: Anvil, anvil_proxy: JsonRpcProxy) -> None:
    tx_hash = anvil.rpc("eth_sendRawTransaction", "0x" + bytes(transfer(anvil).raw_transaction).hex())
    mined = anvil.wait_for_receipt(tx_hash)
    anvil_proxy.rewrite_receipt_hash(tx_hash.upper().replace("0X", "0x"), "0x" + "ab" * 32)

    _, _, answer = post(anvil_proxy, call("eth_getTransactionReceipt", tx_hash))

    assert answer["result"]["transactionHash"] == "0x" + "ab" * 32
    assert answer["result"]["blockNumber"] == mined["blockNumber"]


def test_fails_cuts_delays_pads_overrides_and_transforms(anvil_proxy: JsonRpcProxy) -> None:
    anvil_proxy.fail(502, times=1, body=b"bad gateway")
    assert post(anvil_proxy, call("eth_chainId"))[:3:2] == (502, b"bad gateway")
    assert post(anvil_proxy, call("eth_chainId"))[0] == 200

    anvil_proxy.fail(
        400, body=lambda request: json.dumps({"id": request["id"], "error": {"code": 1}}).encode()
    )
    assert post(anvil_proxy, call("eth_chainId", call_id=42))[2] == {"id": 42, "error": {"code": 1}}

    anvil_proxy.cut()
    with pytest.raises(http.client.RemoteDisconnected):
        post(anvil_proxy, call("eth_chainId"))
    assert post(anvil_proxy, call("eth_chainId"))[0] == 200

    anvil_proxy.delay(0.4)
    connection = socket.create_connection(("127.0.0.1", anvil_proxy.port))
    connection.settimeout(0.2)
    body = json.dumps(call("eth_chainId")).encode()
    connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(TimeoutError):
        connection.recv(100)
    connection.settimeout(2)
    assert connection.recv(100).startswith(b"HTTP/1.1 200")
    connection.close()
    with pytest.raises(ValueError, match="between 0 and 30"):
        anvil_proxy.delay(31)

    anvil_proxy.pad_answers(1000)
    _, headers, answer = post(anvil_proxy, call("eth_chainId"))
    assert answer == {"jsonrpc": "2.0", "id": 1, "result": "0x7a69"}  # still JSON, with 1000 spaces after
    assert int(headers["content-length"]) == len(json.dumps(answer)) + 1000
    anvil_proxy.pad_answers(0)

    anvil_proxy.override("eth_chainId", error={"code": -32601, "message": "Method not found"})
    anvil_proxy.override("eth_gasPrice", result="0x1")
    anvil_proxy.transform("eth_blockNumber", lambda params, answer: {**answer, "result": "0xffff"})
    _, _, answers = post(
        anvil_proxy,
        [call("eth_chainId", call_id=1), call("eth_gasPrice", call_id=2), call("eth_blockNumber", call_id=3)],
    )
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}},
        {"jsonrpc": "2.0", "id": 2, "result": "0x1"},
        {"jsonrpc": "2.0", "id": 3, "result": "0xffff"},
    ]
    anvil_proxy.reset_faults()
    assert post(anvil_proxy, call("eth_chainId"))[2]["result"] == "0x7a69"


def test_a_keyed_proxy_answers_only_its_key_and_never_shows_it(anvil: Anvil) -> None:
    key = "k3y" + "f00d" * 8
    with JsonRpcProxy(anvil.rpc_url, key=key) as proxy:
        assert proxy.url.endswith(f"/v2/{key}")
        assert post(proxy, call("eth_chainId"))[0] == 200
        assert post(proxy, call("eth_chainId"), path="/v2/wrong")[0] == 401
        assert post(proxy, call("eth_chainId"), path="/")[0] == 401
        assert key not in repr(proxy)
        port = proxy.port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.url
