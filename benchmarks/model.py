"""The model test at length, and the mutants it must catch.

``python -m benchmarks.model long [--examples N]`` runs ``tests/model/test_model.py`` with fresh
randomness (not CI's fixed examples) and reports the examples run, the wall time and where the
examples came to rest. ``python -m benchmarks.model mutants`` plants each deliberate bug below in a
copy of the package (the working tree is never touched), runs the model against it and reports the
invariant that failed and hypothesis' shortest failing example; a mutant the model does not catch
fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "operator" / "cvm_prelaunch_operator"
MODEL = ROOT / "tests" / "model" / "test_model.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # below the package
    old: str
    new: str


MUTANTS = (
    Mutant(
        "skip the input check on resume (a state is never compared with the spec)",
        "reconcile/engine.py",
        "        target = state.target\n        if target.cvm_id != spec.cvm_id:",
        "        target = state.target\n        return None\n        if target.cvm_id != spec.cvm_id:",
    ),
    Mutant(
        "drop the write-ahead before broadcast (send, then persist the signed transaction)",
        "reconcile/steps/registering.py",
        "        ctx, chain, nonce=nonce, gas=gas, fees=fees, sent_in_block=survey.head.number\n    )\n",
        "        ctx, chain, nonce=nonce, gas=gas, fees=fees, sent_in_block=survey.head.number\n    )\n"
        "    ctx.may_act()\n    await client.send(version.raw)\n",
    ),
    Mutant(
        "keep a reverted record (a stall that keeps the transaction every pass fails on)",
        "reconcile/steps/registering.py",
        "            return await registration_failed(ctx, chain, version.tx_hash, receipt, problem, "
        "version.sender)",
        "            failed = await registration_failed(ctx, chain, version.tx_hash, receipt, problem, "
        "version.sender)\n"
        "            return Transition(state=state, verdict=failed.verdict, events=failed.events)",
    ),
)


def run_model(env: dict[str, str], timeout: float) -> tuple[int, str, float]:
    began = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:logging",
            "-s",
            str(MODEL),
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - began


def long_mode(examples: int, steps: int, timeout: float) -> dict[str, object]:
    code, output, seconds = run_model(
        {
            "MODEL_EXAMPLES": str(examples),
            "MODEL_STEPS": str(steps),
            "MODEL_RANDOM": "1",
            "MODEL_STATS": "1",
            # pytest's bound on the test is the run's (a 20,000-example run outlasts CI's 30 minutes).
            "MODEL_TIMEOUT": str(timeout),
        },
        timeout,
    )
    stats = [line.removeprefix("model: ") for line in output.splitlines() if line.startswith("model: ")]
    report: dict[str, object] = {
        "examples": examples,
        "steps": steps,
        "passed": code == 0,
        "seconds": round(seconds, 1),
        "stats": stats,
    }
    if code != 0:
        # What failed and hypothesis' shortest example, so that a failure of the long run can be replayed.
        report["failure"], report["example"] = falsifying_example(output)
        if "Timeout >" in output:
            report["failure"] = f"the run's time bound ({timeout:.0f} s) was reached, not an invariant"
        report["output_tail"] = output.splitlines()[-60:]
    return report


def falsifying_example(output: str) -> tuple[str, list[str]]:
    """The failed invariant and the shortest example's steps, from hypothesis' report."""
    failure = next(
        (m.group(1).strip() for m in re.finditer(r"(?:AssertionError|Error): (.+)", output)),
        "no assertion found",
    )
    steps = [
        line.strip().lstrip("| ").strip()
        for line in output.splitlines()
        if re.search(r"\bstate\.\w+\(", line)
    ]
    steps = [s for s in steps if "one_registration_per_hash" not in s and "status_is_readable" not in s]
    return failure, steps


def mutants(examples: int, timeout: float) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for mutant in MUTANTS:
        with tempfile.TemporaryDirectory(prefix="cpls-mutant-") as scratch:
            copy = Path(scratch) / "cvm_prelaunch_operator"
            shutil.copytree(PACKAGE, copy)
            target = copy / mutant.file
            text = target.read_text()
            if text.count(mutant.old) != 1:
                raise SystemExit(
                    f"mutant {mutant.name!r}: the code to change is not there once; update MUTANTS"
                )
            target.write_text(text.replace(mutant.old, mutant.new))
            code, output, seconds = run_model(
                {
                    "PYTHONPATH": scratch,
                    "MODEL_EXAMPLES": str(examples),
                    "MODEL_ONE_BUG": "1",
                    "MODEL_RANDOM": "1",
                },
                timeout,
            )
        failure, steps = falsifying_example(output)
        results.append(
            {
                "mutant": mutant.name,
                "caught": code != 0,
                "seconds": round(seconds, 1),
                "failure": failure,
                "example": steps,
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    long = sub.add_parser("long", help="the model test at length, with fresh randomness")
    long.add_argument("--examples", type=int, default=20_000)
    long.add_argument("--steps", type=int, default=40)
    long.add_argument("--timeout", type=float, default=6 * 3600.0)
    mut = sub.add_parser("mutants", help="plant each deliberate bug in a copy and check the model catches it")
    mut.add_argument("--examples", type=int, default=2_000)
    mut.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if args.command == "long":
        report = long_mode(args.examples, args.steps, args.timeout)
        print(json.dumps(report, indent=2))
        return 0 if report["passed"] else 1
    found = mutants(args.examples, args.timeout)
    print(json.dumps(found, indent=2))
    return 0 if all(r["caught"] for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
