"""The official TypeScript SDK (``@phala/cloud``, bundled with the CLI) runs its pre-launch script
update against the simulator: it parses the 465 from ``details[]``, and accepts the 202 only when
it is exactly ``{status, message, correlation_id}``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
from simtest_helpers import SendTx, api_client, hash_bytes, wait_for_operation

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer

SCRIPT = "#!/bin/sh\necho 'from the TypeScript SDK'\n"

_NODE_SCRIPT = """
const sdk = require(process.argv[1]);
const args = JSON.parse(process.argv[2]);
const client = sdk.createClient({
  apiKey: process.env.PHALA_CLOUD_API_KEY, baseURL: process.env.PHALA_CLOUD_API_PREFIX,
});
client.safeUpdatePreLaunchScript(args).then((result) => {
  process.stdout.write(JSON.stringify(result));
});
"""


def run_sdk(sim: SimulatorServer, target: SimTarget, args: dict[str, Any]) -> dict[str, Any]:
    node = shutil.which("node")
    sdk = paths.node_modules() / "@phala" / "cloud"
    if node is None or not sdk.is_dir():
        pytest.skip("node or @phala/cloud is not installed")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PHALA_CLOUD_API_PREFIX": sim.base_url,
        "PHALA_CLOUD_API_KEY": target.api_key,
    }
    result = subprocess.run(
        [node, "-e", _NODE_SCRIPT, str(sdk), json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


@pytest.mark.parametrize("form", ["structured", "nested"])
def test_sdk_two_phase_update(
    sim: SimulatorServer, sim_onchain_cvm: SimTarget, send_tx: SendTx, form: str
) -> None:
    sim.admin.settings(form_465=form)
    phase1 = run_sdk(sim, sim_onchain_cvm, {"id": sim_onchain_cvm.id, "pre_launch_script": SCRIPT})
    assert phase1["success"] is True, phase1
    required = phase1["data"]
    assert required["status"] == "precondition_required"
    assert required["app_id"] == sim_onchain_cvm.cvm.app_id
    assert required["kms_info"]["chain_id"] == sim_onchain_cvm.cvm.chain_id

    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(required["compose_hash"]))
    phase2 = run_sdk(
        sim,
        sim_onchain_cvm,
        {
            "id": sim_onchain_cvm.id,
            "pre_launch_script": SCRIPT,
            "compose_hash": required["compose_hash"],
            "transaction_hash": tx,
        },
    )
    assert phase2["success"] is True, phase2
    assert phase2["data"]["status"] == "in_progress"

    sent = [r for r in sim.admin.requests() if r.method == "PATCH"]
    assert [r.header("content-type") for r in sent] == ["text/plain", "text/plain"]
    assert [r.body for r in sent] == [SCRIPT.encode(), SCRIPT.encode()]
    assert sent[1].header("x-compose-hash") == required["compose_hash"]
    with api_client(sim.base_url, sim_onchain_cvm.api_key) as client:
        operation = wait_for_operation(client, sim_onchain_cvm.id, phase2["data"]["correlation_id"])
    assert operation["status"] == "completed"
    assert operation["compose_hash"] == required["compose_hash"].removeprefix("0x")


def test_sdk_offchain_update(sim: SimulatorServer, sim_offchain_cvm: SimTarget) -> None:
    result = run_sdk(sim, sim_offchain_cvm, {"id": sim_offchain_cvm.id, "pre_launch_script": SCRIPT})
    assert result["success"] is True, result
    assert set(result["data"]) == {"status", "message", "correlation_id"}
