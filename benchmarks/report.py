"""The run's results as JSON and as a Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAX_RSS_SAMPLES_SHOWN = 20


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)


def _figure(key: str, value: Any) -> str:
    if key == "rss_samples_mib":
        step = max(1, len(value) // MAX_RSS_SAMPLES_SHOWN)  # every sample stays in the JSON
        shown = value[::step] if value[-1] in value[::step] else [*value[::step], value[-1]]
        return ", ".join(f"{t:g}s:{m:.1f}" for t, m in shown)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_number(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(str(v) for v in value) or "none"
    return value if isinstance(value, str) else _number(value)


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        f"# Benchmark results ({'smoke' if report['smoke'] else 'full run'})",
        "",
        f"- Command: `{report['command'].strip()}`",
        f"- Started: {report['started']} UTC, took {report['seconds']:.0f} s",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_mib']} MiB, "
        f"{machine['system']}, Python {machine['python']}, load average at start "
        f"{' / '.join(str(x) for x in machine['load_average'])}",
        f"- Operator version: {report['operator_version']}",
        "",
        "| Scenario | Target | Measured | Met |",
        "|---|---|---|---|",
    ]
    for name, result in report["scenarios"].items():
        if "error" in result:
            lines.append(f"| {name} | (did not complete) | {result['error'][:120]} | no |")
            continue
        for item in result.get("targets", []):
            measured = f"{_number(item['measured'])} {item['unit']}".strip()
            lines.append(f"| {name} | {item['target']} | {measured} | {'yes' if item['met'] else '**no**'} |")
    for name, result in report["scenarios"].items():
        lines += ["", f"## {name}: {result.get('title', '')}", ""]
        if "error" in result:
            lines += ["```", result["error"], "```"]
            continue
        latency = result.get("latency_ms") or {}
        if latency:
            lines += ["| Latency (ms) | n | median | p90 | p99 | max |", "|---|---|---|---|---|---|"]
            for what, stats in latency.items():
                if not stats.get("count"):
                    continue
                lines.append(
                    f"| {what} | {stats['count']} | {_number(stats['median'])} | {_number(stats['p90'])} | "
                    f"{_number(stats['p99'])} | {_number(stats['max'])} |"
                )
            lines.append("")
        for key, value in result.get("figures", {}).items():
            lines.append(f"- {key}: {_figure(key, value)}")
        for note in result.get("notes", []):
            lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], directory: Path, stem: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
