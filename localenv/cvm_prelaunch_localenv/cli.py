"""``cvm-prelaunch-localenv``: bring the local environment up, or run the end-to-end demo on it."""

from __future__ import annotations

import argparse
import hashlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import CHAIN_PROFILES
from cvm_prelaunch_localenv.env import LocalEnv
from cvm_prelaunch_localenv.operator_process import OperatorProcess

DEMO_NAMESPACE = "demo"
OFFCHAIN_SCRIPT = "#!/bin/sh\n# Runs before the containers start.\necho 'hello from an off-chain CVM'\n"
ONCHAIN_SCRIPT = "#!/bin/sh\necho 'hello from an on-chain CVM'\n"
ONCHAIN_SCRIPT_V2 = "#!/bin/sh\necho 'hello again, second version'\nsysctl -w net.core.somaxconn=1024\n"


def _say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _up(env: LocalEnv) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(env.describe(), flush=True)
    print("\nCtrl-C tears everything down.", flush=True)
    while not stop.wait(1.0):
        pass
    return 0


def _demo(env: LocalEnv, work_dir: Path) -> int:
    cp, sim = env.control_plane, env.sim
    print(env.describe(), flush=True)

    _say("Phala Cloud (simulated): one CVM with Phala's KMS, one whose KMS is an app contract on anvil")
    workspace = sim.admin.add_workspace(name="demo")
    offchain = sim.admin.add_cvm(workspace=workspace["id"], kms_type="phala", name="web-offchain")
    contract = env.deploy_app_contract(owner=0, allow_any_device=True)
    onchain = sim.admin.add_cvm(
        workspace=workspace["id"],
        kms_type="ethereum",
        chain_id=env.anvil.chain_id,
        app_id=contract.address,
        name="web-onchain",
    )
    print(f"off-chain CVM {offchain.id}; on-chain CVM {onchain.id} (app contract {contract.address})")

    _say("Operator: started as a process, watching namespace 'demo'")
    operator = OperatorProcess(
        kubeconfig=cp.kubeconfig,
        phala_api_url=sim.base_url,
        namespaces=(DEMO_NAMESPACE,),
        log_path=work_dir / "operator.log",
    ).start()
    try:
        cp.create_namespace(DEMO_NAMESPACE, exist_ok=True)
        signer = env.anvil.accounts[0].private_key.reveal()
        scenario.apply(
            cp,
            scenario.secret("phala-api-key", DEMO_NAMESPACE, {"api-key": offchain.api_key}),
            scenario.secret("app-owner-key", DEMO_NAMESPACE, {"private-key": signer}),
            scenario.configmap("web-offchain-script", DEMO_NAMESPACE, {"pre-launch.sh": OFFCHAIN_SCRIPT}),
            scenario.configmap("web-onchain-script", DEMO_NAMESPACE, {"pre-launch.sh": ONCHAIN_SCRIPT}),
            scenario.cvm_prelaunch_script(
                "web-offchain", DEMO_NAMESPACE, cvm_id=offchain.id, config_map="web-offchain-script"
            ),
            scenario.cvm_prelaunch_script(
                "web-onchain",
                DEMO_NAMESPACE,
                cvm_id=onchain.id,
                config_map="web-onchain-script",
                on_chain={
                    "rpcUrl": env.anvil.rpc_url,
                    "signerKeySecretRef": {"name": "app-owner-key", "key": "private-key"},
                },
            ),
        )
        _say("kubectl apply: two CvmPreLaunchScripts; waiting for both to be Synced")
        started = time.monotonic()
        for name in ("web-offchain", "web-onchain"):
            scenario.wait_for(cp, DEMO_NAMESPACE, name, scenario.is_synced, timeout=120, what="Synced")
        print(f"both Synced in {time.monotonic() - started:.1f}s")

        _say("Editing the on-chain ConfigMap: a new compose hash is registered on chain, then applied")
        scenario.patch_configmap(
            cp, DEMO_NAMESPACE, "web-onchain-script", {"pre-launch.sh": ONCHAIN_SCRIPT_V2}
        )
        want = hashlib.sha256(ONCHAIN_SCRIPT_V2.encode()).hexdigest()
        started = time.monotonic()
        scenario.wait_for(
            cp,
            DEMO_NAMESPACE,
            "web-onchain",
            lambda b: scenario.is_synced(b) and b["status"].get("scriptSha256") == want,
            timeout=120,
            what="re-synced",
        )
        print(f"re-synced in {time.monotonic() - started:.1f}s; the CVM now runs:")
        print(sim.admin.cvm_state(onchain.id)["pre_launch_script"])

        _say("kubectl get cpls -n demo -o wide")
        print(cp.kubectl("get", "cpls", "-n", DEMO_NAMESPACE, "-o", "wide").stdout)
        _say("kubectl describe cpls web-onchain -n demo")
        print(cp.kubectl("describe", "cpls", "web-onchain", "-n", DEMO_NAMESPACE).stdout)
    finally:
        operator.stop()
    _say("Demo complete; tearing everything down")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cvm-prelaunch-localenv",
        description="The embedded local environment: kube-apiserver + etcd, anvil, the app contract and "
        "the Phala Cloud simulator, all on 127.0.0.1.",
    )
    parser.add_argument(
        "command", choices=["up", "demo"], help="up: run until Ctrl-C; demo: the end-to-end demo"
    )
    parser.add_argument("--work-dir", type=Path, help="keep logs and kubeconfig here (default: a temp dir)")
    parser.add_argument(
        "--chain-profile",
        choices=list(CHAIN_PROFILES),
        default="instant",
        help="the network anvil plays: "
        + "; ".join(f"{p.name}: {p.description}" for p in CHAIN_PROFILES.values())
        + " (default: instant)",
    )
    parser.add_argument(
        "--block-time",
        type=float,
        default=None,
        help="seconds between blocks, overriding the profile's (0: automine)",
    )
    parser.add_argument("--chain-id", type=int, default=None, help="chain id, overriding the profile's")
    args = parser.parse_args(argv)
    if args.block_time is not None and args.block_time < 0:
        parser.error("--block-time must be 0 (automine) or more seconds")

    env = LocalEnv(
        args.work_dir, chain_profile=args.chain_profile, chain_id=args.chain_id, block_time=args.block_time
    )
    print("Starting the local environment ...", flush=True)
    try:
        env.start()
    except Exception as exc:
        print(f"error: the local environment did not start: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "up":
            return _up(env)
        return _demo(env, env.work_dir)
    finally:
        env.stop()


if __name__ == "__main__":
    sys.exit(main())
