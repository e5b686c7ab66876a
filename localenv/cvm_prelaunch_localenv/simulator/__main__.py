"""``python -m cvm_prelaunch_localenv.simulator``: run the Phala Cloud simulator from the shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from cvm_prelaunch_localenv.simulator.app import ADMIN_PREFIX, API_PREFIX, Simulator
from cvm_prelaunch_localenv.simulator.server import _bound_port

_EPILOG = """\
seed file (JSON):
  {"workspaces": [{"name": "demo", "api_key": "phak_..."}],
   "cvms": [{"workspace": "demo", "name": "my-app", "kms_type": "base", "chain_id": 8453,
             "app_id": "<app contract address>", "docker_compose_file": "...",
             "pre_launch_script": "#!/bin/sh\\n..."}],
   "settings": {"operation_seconds": 2, "form_465": "structured"}}

The API answers under <base URL> (like https://cloud-api.phala.com/api/v1); the admin API
(seed CVMs, faults, request log, settings) under /_simulator. The key of the default workspace is
taken from --api-key or $PHALA_SIM_API_KEY; without either it is random and can be read with
GET /_simulator/workspaces.
"""


def _rpc_arg(text: str) -> tuple[int, str]:
    chain_id, sep, url = text.partition("=")
    if not sep or not chain_id.strip().isdigit() or not url:
        raise argparse.ArgumentTypeError("expected CHAIN_ID=URL, like 31337=http://127.0.0.1:8545")
    return int(chain_id), url


_INT_FIELDS = frozenset({"chain_id", "vcpu", "memory", "disk_size"})


def _cvm_arg(text: str) -> dict[str, Any]:
    """``name=my-app,kms_type=base,chain_id=8453,pre_launch_script=@script.sh`` (``@`` reads a file)."""
    spec: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs, got {item!r}")
        if value.startswith("@"):
            try:
                value = Path(value[1:]).read_text()
            except OSError as exc:
                raise argparse.ArgumentTypeError(f"{key}: cannot read {value[1:]}: {exc}") from None
        try:
            spec[key] = int(value) if key in _INT_FIELDS else value
        except ValueError:
            raise argparse.ArgumentTypeError(f"{key} must be an integer") from None
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cvm_prelaunch_localenv.simulator",
        description="Simulated Phala Cloud API on 127.0.0.1, verifying on-chain registrations "
        "against a real chain over JSON-RPC.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--seed", type=Path, help="JSON file with workspaces, CVMs and settings")
    parser.add_argument(
        "--cvm",
        type=_cvm_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE,...",
        help="a CVM of the default workspace, like name=my-app,kms_type=base,chain_id=8453,"
        "app_id=0x...,pre_launch_script=@script.sh (repeatable; @ reads a file)",
    )
    parser.add_argument(
        "--rpc",
        type=_rpc_arg,
        action="append",
        default=[],
        metavar="CHAIN_ID=URL",
        help="JSON-RPC endpoint used to verify transactions on that chain (repeatable)",
    )
    parser.add_argument("--api-key", help="key of the default workspace (or $PHALA_SIM_API_KEY)")
    parser.add_argument("--operation-seconds", type=float, help="how long an update operation runs")
    parser.add_argument("--phase1-ttl-seconds", type=float, help="how long a Phase-1 body is cached")
    parser.add_argument(
        "--receipt-retry-seconds", type=float, help="how long Phase 2 waits for a missing receipt"
    )
    parser.add_argument("--form-465", choices=("structured", "flat", "nested"), help="465 body form")
    parser.add_argument("--hash-without-0x", action="store_true", help="send 465 hashes without 0x")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for name in ("operation_seconds", "phase1_ttl_seconds", "receipt_retry_seconds", "form_465"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.hash_without_0x:
        settings["hash_0x"] = False
    return settings


async def _serve(args: argparse.Namespace) -> None:
    seed: dict[str, Any] = json.loads(args.seed.read_text()) if args.seed else {}
    seed["cvms"] = [*(seed.get("cvms") or []), *args.cvm]
    simulator = Simulator(
        seed=seed,
        rpc_urls=dict(args.rpc),
        api_key=args.api_key or os.environ.get("PHALA_SIM_API_KEY"),
        settings=_settings(args),
    )
    runner = web.AppRunner(simulator.build_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    root = f"http://{args.host}:{_bound_port(runner)}"
    print(json.dumps({"base_url": root + API_PREFIX, "admin_url": root + ADMIN_PREFIX}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
