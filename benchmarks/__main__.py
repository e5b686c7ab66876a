"""``python -m benchmarks [--smoke] [--scenario NAME ...]``: run the benchmark suite on the local
environment (real kube-apiserver, the Phala Cloud simulator, anvil) and write
``benchmarks/results/<timestamp>.json`` and ``.md``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.env import Bench
from benchmarks.scenarios import SCENARIOS, SMOKE, Run, Sizes
from benchmarks.stats import machine
from cvm_prelaunch_localenv.paths import repo_root
from cvm_prelaunch_operator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the suite runs (seconds)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this scenario (repeatable); default: all, in the order listed",
    )
    parser.add_argument("--output", type=Path, help="directory for the results (default benchmarks/results)")
    parser.add_argument("--soak-seconds", type=float, help="soak duration (default 600, smoke 5)")
    parser.add_argument(
        "--block-time", type=float, help="anvil block time B of the on-chain scenario (default 2)"
    )
    parser.add_argument(
        "--fanout-limit", type=int, help="PHALA_CLOUD_MAX_CONCURRENCY of the fan-out (default 8)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a target is missed (not only when a scenario fails)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sizes: Sizes = SMOKE if args.smoke else Sizes()
    overrides: dict[str, Any] = {
        "soak_seconds": args.soak_seconds,
        "block_time": args.block_time,
        "fanout_limit": args.fanout_limit,
    }
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    names = args.scenario or list(SCENARIOS)
    output = args.output or repo_root() / "benchmarks" / "results"
    started = datetime.now(UTC)
    stem = started.strftime("%Y%m%dT%H%M%SZ") + ("-smoke" if args.smoke else "")
    began = time.monotonic()
    result: dict[str, Any] = {
        "command": " ".join(["hack/bench.sh", shlex.join(sys.argv[1:] if argv is None else argv)]).strip(),
        "started": started.strftime("%Y-%m-%d %H:%M:%S"),
        "smoke": args.smoke,
        "operator_version": __version__,
        "machine": machine(),
        "sizes": dataclasses.asdict(sizes),
        "scenarios": {},
    }
    failed = missed = False
    work_dir = Path(tempfile.mkdtemp(prefix="cvm-bench-"))
    with Bench(work_dir) as bench:
        run = Run(bench=bench, sizes=sizes, smoke=args.smoke)
        for name in names:
            print(f">> {name}", file=sys.stderr, flush=True)
            scenario_began = time.monotonic()
            try:
                outcome = SCENARIOS[name](run)
            except Exception as exc:
                failed = True
                outcome = {"error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"}
            outcome["seconds"] = round(time.monotonic() - scenario_began, 1)
            result["scenarios"][name] = outcome
            missed = missed or any(not t["met"] for t in outcome.get("targets", []))
            for item in outcome.get("targets", []):
                verdict = "ok  " if item["met"] else "MISS"
                print(
                    f"   {verdict} {item['target']}: {item['measured']} {item['unit']}",
                    file=sys.stderr,
                    flush=True,
                )
            if "error" in outcome:
                print(f"   FAILED: {outcome['error']}", file=sys.stderr, flush=True)
    result["seconds"] = time.monotonic() - began
    result["work_dir"] = str(work_dir)
    json_path, md_path = report.write(result, output, stem)
    print(f"{json_path}\n{md_path}", flush=True)
    if failed:
        return 2
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
