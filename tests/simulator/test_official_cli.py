"""The official Phala CLI (npm ``phala``) completes a pre-launch script update of an on-chain CVM
against the simulator and anvil: GET the CVM (legacy shape), Phase 1 on the unified PATCH, its own
device and compose-hash transactions through viem (Multicall3 reads), Phase 2, ``--wait``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import deploy_app_contract, install_multicall3
from cvm_prelaunch_localenv.simulator import SimulatorServer, compose_hash
from cvm_prelaunch_operator.domain.secrets import Redactor

# The CLI's chain library knows Multicall3 only on chains 1 and 8453: play Base.
BASE_CHAIN_ID = 8453
CLI_TIMEOUT_S = 180.0
DOCKER_COMPOSE = "services:\n  web:\n    image: nginx:1.27-alpine\n"
OLD_SCRIPT = "#!/bin/sh\necho v1\n"
NEW_SCRIPT = "#!/bin/sh\necho 'v2 from the official CLI'\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_chain() -> Iterator[Anvil]:
    with Anvil(chain_id=BASE_CHAIN_ID) as chain:
        install_multicall3(chain)
        yield chain


def test_official_cli_updates_onchain_cvm(base_chain: Anvil, tmp_path: Path) -> None:
    phala = paths.node_modules() / ".bin" / "phala"
    if not phala.exists():
        pytest.skip("the official CLI is not installed (npm ci)")
    owner = base_chain.accounts[0]
    contract_address = deploy_app_contract(base_chain.rpc_url, owner.private_key)
    with SimulatorServer(
        rpc_urls={BASE_CHAIN_ID: base_chain.rpc_url}, settings={"operation_seconds": 0.5}
    ) as sim:
        cvm = sim.admin.add_cvm(
            kms_type="base",
            chain_id=BASE_CHAIN_ID,
            app_id=contract_address,
            docker_compose_file=DOCKER_COMPOSE,
            pre_launch_script=OLD_SCRIPT,
        )
        expected = compose_hash(
            json.loads(sim.admin.cvm_state(cvm.id)["app_compose"]) | {"pre_launch_script": NEW_SCRIPT}
        )
        compose_file = tmp_path / "docker-compose.yml"
        compose_file.write_text(DOCKER_COMPOSE)
        script_file = tmp_path / "prelaunch.sh"
        script_file.write_text(NEW_SCRIPT)
        home = tmp_path / "home"
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),  # no stored credentials or profiles of the machine
            "PHALA_CLOUD_API_PREFIX": sim.base_url,
            "PHALA_CLOUD_API_KEY": cvm.api_key,
            "PHALA_DISABLE_UPDATE_CHECK": "1",
            "NO_COLOR": "1",
        }
        argv = [
            str(phala),
            "deploy",
            "--cvm-id",
            cvm.vm_uuid,
            "-c",
            str(compose_file),
            "--pre-launch-script",
            str(script_file),
            # A throwaway anvil dev key, not a secret of anyone's.
            "--private-key",
            owner.private_key.reveal(),
            "--rpc-url",
            base_chain.rpc_url,
            "--wait",
            "--json",
        ]
        result = subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
        )
        redact = Redactor([owner.private_key, cvm.api_key])
        output = redact(result.stdout + result.stderr)
        assert result.returncode == 0, output
        # The CLI prints viem's logs on stdout before its JSON summary.
        summary = json.loads(result.stdout[result.stdout.rindex("\n{") :])
        assert summary["success"] is True, output

        state = sim.admin.cvm_state(cvm.id)
        assert state["pre_launch_script"] == NEW_SCRIPT
        assert state["compose_hash"] == expected
        assert hashlib.sha256(state["app_compose"].encode()).hexdigest() == expected
        assert [op["status"] for op in state["operations"]] == ["completed"]

        log = sim.admin.requests()
        calls = [(r.method, r.path, r.status) for r in log]
        patches = [r for r in log if r.method == "PATCH"]
        assert [r.status for r in patches] == [465, 202], calls
        assert patches[0].path == f"/api/v1/cvms/{cvm.vm_uuid.replace('-', '')}"
        assert set(patches[0].json()) >= {"docker_compose_file", "pre_launch_script"}
        assert patches[1].json() == {}
        assert patches[1].header("x-compose-hash") == "0x" + expected
        assert log[0].method == "GET" and log[0].header("x-phala-version") == "2025-10-28"
        assert all(r.header("x-api-key") == "***" for r in log)
