"""``python -m cvm_prelaunch_localenv.simulator`` runs alone from the shell: seed file, RPC flags,
the base URL printed on start, a clean stop on SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from simtest_helpers import api_client

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.processes import ManagedProcess

API_KEY = "phak_shell_test_key"


def test_help_documents_the_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cvm_prelaunch_localenv.simulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in ("--port", "--seed", "--cvm", "--rpc", "--api-key", "--operation-seconds", "--form-465"):
        assert flag in result.stdout


def test_runs_alone_with_a_seed_and_an_rpc(tmp_path: Path, anvil: Anvil) -> None:
    seed = {
        "workspaces": [{"name": "shell", "api_key": API_KEY}],
        "cvms": [
            {
                "workspace": "shell",
                "name": "shell-app",
                "kms_type": "ethereum",
                "chain_id": anvil.chain_id,
                "app_id": "0x" + "ab" * 20,
                "pre_launch_script": "echo from seed\n",
            }
        ],
    }
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed))
    script_file = tmp_path / "script.sh"
    script_file.write_text("echo from a flag\n")
    process = ManagedProcess(
        "simulator",
        [
            sys.executable,
            "-m",
            "cvm_prelaunch_localenv.simulator",
            "--port",
            "0",
            "--seed",
            str(seed_file),
            "--rpc",
            f"{anvil.chain_id}={anvil.rpc_url}",
            "--operation-seconds",
            "0.1",
            "--cvm",
            f"name=flag-app,pre_launch_script=@{script_file}",
        ],
        log_path=tmp_path / "simulator.log",
    ).start()
    try:
        urls: dict[str, str] = {}

        def announced() -> bool:
            lines = process.log_path.read_text().splitlines()
            if lines and lines[0].startswith("{"):
                urls.update(json.loads(lines[0]))
                return True
            return False

        process.wait_until(announced, timeout=20)
        assert urls["base_url"].endswith("/api/v1")
        with api_client(urls["base_url"], API_KEY) as client:
            assert client.get("/cvms/shell-app/pre-launch-script").json() == "echo from seed\n"
            response = client.patch(
                "/cvms/shell-app/pre-launch-script",
                content=b"echo new\n",
                headers={"Content-Type": "text/plain"},
            )
            assert response.status_code == 465
        with api_client(urls["base_url"], None) as anonymous:
            assert anonymous.get("/cvms/flag-app").status_code == 401
        workspaces = httpx.get(urls["admin_url"] + "/workspaces", timeout=10).json()
        default_key = next(w["api_key"] for w in workspaces if w["name"] == "default")
        with api_client(urls["base_url"], default_key) as client:
            assert client.get("/cvms/flag-app/pre-launch-script").json() == "echo from a flag\n"
        settings = httpx.get(urls["admin_url"] + "/settings", timeout=10).json()
        assert settings["rpc_urls"] == [anvil.chain_id]  # which chains, never the URLs
        assert settings["operation_seconds"] == 0.1
    finally:
        started = time.monotonic()
        process.stop(grace=5)
        assert time.monotonic() - started < 5  # SIGTERM is enough
