"""Each Ready reason the API promises, produced by the real operator on the real environment, and
the fix a user would make clearing it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from eth_account import Account

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.scenario import SCRIPT_V1, Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.domain.secrets import Secret


def stalled(body: Any) -> bool:
    return scenario.condition(body, "Stalled").get("status") == "True"


@pytest.fixture(autouse=True)
def running_operator(operator_factory: OperatorFactory) -> None:
    operator_factory()


def test_configmap_not_found_then_created(setup: Workbench, offchain_cvm: SimTarget) -> None:
    setup.create(offchain_cvm)
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"scriptRef": {"name": "missing", "key": "x"}})
    body = setup.reason("app", "ConfigMapNotFound")
    assert stalled(body) and body["status"]["phase"] == "Failed"
    assert "missing" in body["status"]["message"]
    # The fix: create the ConfigMap. The watch on ConfigMaps brings the resource back.
    scenario.apply(setup.cp, scenario.configmap("missing", setup.namespace, {"x": SCRIPT_V1}))
    setup.synced()


def test_key_not_found(setup: Workbench, offchain_cvm: SimTarget) -> None:
    setup.create(offchain_cvm)
    setup.synced()
    scenario.patch_spec(
        setup.cp, setup.namespace, "app", {"scriptRef": {"name": "app-script", "key": "nope"}}
    )
    body = setup.reason("app", "KeyNotFound")
    assert stalled(body)
    scenario.patch_configmap(setup.cp, setup.namespace, "app-script", {"nope": SCRIPT_V1 + "# moved\n"})
    setup.synced()


def test_secret_not_found_then_created(setup: Workbench, offchain_cvm: SimTarget) -> None:
    setup.create(offchain_cvm)
    setup.synced()
    setup.cp.kubectl("delete", "secret", "app-api", "-n", setup.namespace)
    assert stalled(setup.reason("app", "SecretNotFound"))
    scenario.apply(setup.cp, scenario.secret("app-api", setup.namespace, {"api-key": offchain_cvm.api_key}))
    setup.synced()


def test_unauthorized_then_key_rotated(setup: Workbench, offchain_cvm: SimTarget) -> None:
    setup.create(offchain_cvm, api_key="phak_wrong_key_for_this_test")
    body = setup.reason("app", "Unauthorized")
    assert stalled(body)
    assert "phak_wrong_key_for_this_test" not in str(body)
    scenario.apply(setup.cp, scenario.secret("app-api", setup.namespace, {"api-key": offchain_cvm.api_key}))
    setup.synced()


def test_cvm_not_found(setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer) -> None:
    target = dataclasses.replace(
        offchain_cvm, cvm=dataclasses.replace(offchain_cvm.cvm, id="cvm_doesNotExist")
    )
    setup.create(target)
    assert stalled(setup.reason("app", "CvmNotFound"))


def test_awaiting_approval_until_annotated(setup: Workbench, onchain_cvm: SimTarget, anvil: Anvil) -> None:
    setup.create(onchain_cvm, on_chain={"approval": "Manual"})
    body = setup.reason("app", "AwaitingApproval")
    assert body["status"]["phase"] == "AwaitingApproval"
    assert not stalled(body)
    wanted = body["status"]["composeHash"]
    assert wanted in body["status"]["message"]
    scenario.annotate(setup.cp, setup.namespace, "app", {"cloud.phala.com/approved-compose-hash": wanted})
    synced = setup.synced()
    assert synced["status"]["composeHash"] == wanted


def test_not_contract_owner(setup: Workbench, onchain_cvm: SimTarget) -> None:
    setup.create(onchain_cvm, signer=1)  # the contract is owned by account 0
    body = setup.reason("app", "NotContractOwner")
    assert stalled(body)


def test_compose_hash_mismatch_is_never_signed(
    setup: Workbench, onchain_cvm: SimTarget, sim: SimulatorServer, anvil: Anvil
) -> None:
    sim.admin.inject(wrong_compose_hash=True, cvm=onchain_cvm.id)
    block = anvil.web3().eth.block_number
    setup.create(onchain_cvm)
    body = setup.reason("app", "ComposeHashMismatch")
    assert stalled(body)
    # Nothing was sent to the chain.
    assert anvil.web3().eth.block_number == block


def test_insufficient_funds(setup: Workbench, sim_cvm_factory: SimCvmFactory, anvil: Anvil) -> None:
    broke = Account.create()
    owner = DevAccount(address=broke.address, private_key=Secret(broke.key.hex()))
    target = sim_cvm_factory(onchain=True, owner=owner, allow_any_device=True)
    scenario.apply(
        setup.cp,
        scenario.secret("broke-signer", setup.namespace, {"private-key": broke.key.hex()}),
    )
    setup.create(
        target, signer=None, on_chain={"signerKeySecretRef": {"name": "broke-signer", "key": "private-key"}}
    )
    body = setup.reason("app", "InsufficientFunds")
    assert stalled(body)
    assert broke.key.hex().removeprefix("0x") not in str(body)


def test_apply_failed(setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer) -> None:
    sim.admin.inject(fail_operation="disk full while restarting", cvm=offchain_cvm.id)
    setup.create(offchain_cvm)
    body = setup.reason("app", "ApplyFailed")
    assert stalled(body)
    assert "disk full" in body["status"]["message"]


def test_suspended_makes_no_call(setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer) -> None:
    sim.admin.clear_requests()
    setup.create(offchain_cvm, suspend=True)
    body = setup.reason("app", "Suspended")
    assert body["status"]["phase"] == "Suspended"
    assert [r for r in sim.admin.requests() if r.cvm == offchain_cvm.id] == []
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"suspend": False})
    setup.synced()


def test_drift_reported(setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer) -> None:
    setup.create(offchain_cvm, driftPolicy="Report", driftCheckInterval="10m")
    setup.synced()
    sim.admin.update_cvm(offchain_cvm.id, pre_launch_script="#!/bin/sh\necho changed by hand\n")
    # A spec edit makes the operator look at the CVM at once (the interval is at least 30 s).
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"driftCheckInterval": "30s"})
    body = setup.reason("app", "Drifted")
    assert scenario.condition(body)["status"] == "False"
    assert not stalled(body)


def test_drift_corrected(setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer) -> None:
    setup.create(offchain_cvm, driftCheckInterval="10m")
    setup.synced()
    sim.admin.update_cvm(offchain_cvm.id, pre_launch_script="#!/bin/sh\necho changed by hand\n")
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"driftCheckInterval": "30s"})
    setup.wait(
        "app",
        lambda b: (
            scenario.is_synced(b) and sim.admin.cvm_state(offchain_cvm.id)["pre_launch_script"] == SCRIPT_V1
        ),
        "drift corrected",
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"onChain": {"rpcUrl": "http://127.0.0.1:1", "rpcUrlSecretRef": {"name": "a", "key": "b"}}},
            "exactly one of rpcUrl or rpcUrlSecretRef",
        ),
        ({"onChain": {"confirmations": 0, "rpcUrl": "http://127.0.0.1:1"}}, "confirmations"),
        ({"scriptRef": {"name": "Not_A_DNS_Name", "key": "k"}}, "scriptRef.name"),
        ({"driftPolicy": "Sometimes"}, "driftPolicy"),
        ({"driftCheckInterval": "ten minutes"}, "driftCheckInterval"),
    ],
)
def test_invalid_resources_are_rejected(
    setup: Workbench, offchain_cvm: SimTarget, change: dict[str, Any], message: str
) -> None:
    body = scenario.cvm_prelaunch_script("bad", setup.namespace, cvm_id="cvm_x", config_map="c")
    body["spec"].update(change)
    with pytest.raises(Exception, match=message) as excinfo:
        scenario.apply(setup.cp, body)
    assert "is invalid" in str(excinfo.value)
