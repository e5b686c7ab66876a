"""The per-resource series and the signer balances as a scrape shows them, the runtime's summary of a
watched body, and the JSON log formatter: the pure parts of the operator's observability."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cvm_prelaunch_operator.domain import logcontext
from cvm_prelaunch_operator.handlers.runtime import ResourceSummary, summarize
from cvm_prelaunch_operator.logs import MESSAGE_LIMIT, JsonFormatter, configure_logging
from cvm_prelaunch_operator.metrics import OperatorMetrics
from cvm_prelaunch_operator.settings import OperatorSettings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(metrics: OperatorMetrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def body(**status: object) -> dict[str, object]:
    return {"metadata": {"name": "x"}, "spec": {}, "status": status}


READY = {"type": "Ready", "status": "True", "reason": "Synced"}
STALLED = {"type": "Stalled", "status": "True", "reason": "ConfigMapNotFound"}


# -- the runtime's summary -------------------------------------------------------------------------


def test_summary_of_a_synced_resource() -> None:
    summary = summarize(
        ("apps", "web"),
        body(
            phase="Synced",
            conditions=[READY, {"type": "Stalled", "status": "False", "reason": "NotStalled"}],
            lastSyncTime="2026-01-02T03:04:05.678Z",
        ),
    )
    assert summary == ResourceSummary(
        namespace="apps",
        name="web",
        ready_status="True",
        ready_reason="Synced",
        phase="Synced",
        stalled=False,
        last_sync_time=1767323045.678,
        pending_approval=False,
        pending_since=None,
    )


def test_summary_of_a_stalled_resource_waiting_for_approval() -> None:
    summary = summarize(
        ("apps", "web"),
        body(
            phase="AwaitingApproval",
            conditions=[{"type": "Ready", "status": "False", "reason": "AwaitingApproval"}, STALLED],
            pendingApproval={"composeHash": "0x" + "ab" * 32, "since": "2026-01-02T00:00:00Z"},
        ),
    )
    assert summary.stalled
    assert summary.pending_approval
    assert summary.pending_since == 1767312000.0
    assert summary.last_sync_time is None


@pytest.mark.parametrize(
    "status",
    [
        None,
        "not a mapping",
        {"conditions": "not a list"},
        {"conditions": [None, 3, "x", {"type": "Ready"}]},
        {"pendingApproval": "yes", "lastSyncTime": 12},
        {"pendingApproval": {"since": "not a time"}},
    ],
)
def test_summary_tolerates_any_status_shape(status: object) -> None:
    summary = summarize(("ns", "n"), {"status": status})
    assert summary.ready_status == "Unknown" and summary.ready_reason == "None"
    assert summary.last_sync_time is None and summary.pending_since is None


# -- the per-resource series -----------------------------------------------------------------------


def test_per_resource_series_follow_the_summaries() -> None:
    metrics = OperatorMetrics()
    views = {
        ("apps", "web"): summarize(
            ("apps", "web"), body(phase="Synced", conditions=[READY], lastSyncTime="2026-01-02T03:04:05Z")
        ),
        ("apps", "api"): summarize(
            ("apps", "api"),
            body(
                phase="AwaitingApproval",
                conditions=[{"type": "Ready", "status": "False", "reason": "AwaitingApproval"}],
                pendingApproval={"since": "2026-01-02T00:00:00Z"},
            ),
        ),
        ("other", "broken"): summarize(
            ("other", "broken"),
            body(phase="Failed", conditions=[{"type": "Ready", "status": "False", "reason": "X"}, STALLED]),
        ),
        ("other", "new"): summarize(("other", "new"), {"spec": {}}),
    }
    metrics.watch_resources(lambda: list(views.values()))
    samples = scrape(metrics)

    def key(namespace: str, name: str, **extra: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"namespace": namespace, "name": name, **extra}.items()))

    assert series(samples, "cvm_prelaunch_resource_ready") == {
        key("apps", "web", reason="Synced"): 1.0,
        key("apps", "api", reason="AwaitingApproval"): 0.0,
        key("other", "broken", reason="X"): 0.0,
        key("other", "new", reason="None"): 0.0,
    }
    assert series(samples, "cvm_prelaunch_resource_stalled") == {
        key("apps", "web"): 0.0,
        key("apps", "api"): 0.0,
        key("other", "broken"): 1.0,
        key("other", "new"): 0.0,
    }
    assert series(samples, "cvm_prelaunch_resource_last_sync_timestamp_seconds") == {
        key("apps", "web"): 1767323045.0
    }
    assert series(samples, "cvm_prelaunch_pending_approval") == {
        key("apps", "web"): 0.0,
        key("apps", "api"): 1.0,
        key("other", "broken"): 0.0,
        key("other", "new"): 0.0,
    }
    assert series(samples, "cvm_prelaunch_pending_approval_since_timestamp_seconds") == {
        key("apps", "api"): 1767312000.0
    }
    # The aggregate gauge still counts by Ready status, reason and phase.
    assert sum(series(samples, "cvm_prelaunch_resources").values()) == 4

    # A deleted resource's series disappear at the next scrape.
    del views[("apps", "api")]
    after = scrape(metrics)
    assert all(("name", "api") not in labels for (_name, labels) in after)
    assert sum(series(after, "cvm_prelaunch_resources").values()) == 3


def test_the_core_observer_reports_transactions_drift_and_signer_balances() -> None:
    metrics = OperatorMetrics()
    observer = metrics.observer()
    observer.transaction("registered")
    observer.transaction("replaced")
    observer.drift()
    observer.signer_balance(8453, "0x00000000000000000000000000000000000000Aa", 3 * 10**17)
    observer.signer_balance(8453, "0x00000000000000000000000000000000000000Aa", 2 * 10**17)  # newer
    observer.signer_balance(1, "0x00000000000000000000000000000000000000Bb", 10**18)
    samples = scrape(metrics)
    outcomes = {
        dict(labels)["outcome"]: v
        for labels, v in series(samples, "cvm_prelaunch_transactions_total").items()
    }
    assert outcomes == {"registered": 1, "reused": 0, "verified": 0, "replaced": 1, "failed": 0}
    assert series(samples, "cvm_prelaunch_drift_detected_total") == {(): 1.0}
    assert series(samples, "cvm_prelaunch_signer_balance_wei") == {
        (("address", "0x00000000000000000000000000000000000000Aa"), ("chain_id", "8453")): 2e17,
        (("address", "0x00000000000000000000000000000000000000Bb"), ("chain_id", "1")): 1e18,
    }


def test_signer_balances_are_bounded_least_recently_reported_first() -> None:
    metrics = OperatorMetrics()
    observer = metrics.observer()
    limit = 1024
    for i in range(limit + 10):
        observer.signer_balance(1, f"0x{i:040x}", i)
    # 0..9 are gone. 10, the oldest left, is reported again; the next new address evicts 11.
    observer.signer_balance(1, f"0x{10:040x}", 10)
    observer.signer_balance(1, "0x" + "f" * 40, 1)
    balances = series(scrape(metrics), "cvm_prelaunch_signer_balance_wei")
    assert len(balances) == limit
    addresses = {dict(labels)["address"] for labels in balances}
    assert f"0x{0:040x}" not in addresses
    assert f"0x{10:040x}" in addresses
    assert f"0x{11:040x}" not in addresses
    assert f"0x{12:040x}" in addresses


# -- JSON logs -------------------------------------------------------------------------------------


def _json_logger(stream: io.StringIO) -> logging.Logger:
    configure_logging(OperatorSettings(log_format="json", log_level="DEBUG"), stream)
    return logging.getLogger("cvm_prelaunch_operator.test")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = (sys.excepthook, threading.excepthook)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


def test_json_lines_carry_the_log_context() -> None:
    stream = io.StringIO()
    log = _json_logger(stream)
    log.info("outside any pass")
    with logcontext.bound("apps", "web"):
        logcontext.set_step("Uploading", "corr-1")
        log.warning("uploaded %d bytes", 42)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    outside, inside = (json.loads(line) for line in lines)
    assert set(outside) == {"time", "level", "logger", "message"}
    assert outside["message"] == "outside any pass"
    assert inside == {
        "time": inside["time"],
        "level": "WARNING",
        "logger": "cvm_prelaunch_operator.test",
        "message": "uploaded 42 bytes",
        "namespace": "apps",
        "name": "web",
        "step": "Uploading",
        "correlation_id": "corr-1",
    }
    assert inside["time"].endswith("Z") and len(inside["time"]) == len("2026-01-02T03:04:05.678Z")


def test_a_traceback_is_one_field_of_one_line() -> None:
    stream = io.StringIO()
    log = _json_logger(stream)
    try:
        raise ValueError("first line\nsecond line")
    except ValueError:
        log.exception("it failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "it failed"
    assert entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: first line\nsecond line" in entry["exception"]


def test_json_lines_are_bounded_and_ascii() -> None:
    stream = io.StringIO()
    log = _json_logger(stream)
    log.info("x" * (3 * MESSAGE_LIMIT) + "\x1b[31m")
    log.info("caf\u00e9 \u2713 \x00")
    big, small = stream.getvalue().splitlines()
    assert len(json.loads(big)["message"]) == MESSAGE_LIMIT
    assert big.isascii() and small.isascii()
    assert json.loads(small)["message"] == "caf\u00e9 \u2713 \x00"


def test_text_format_stays_the_default() -> None:
    stream = io.StringIO()
    configure_logging(OperatorSettings(), stream)
    logging.getLogger("cvm_prelaunch_operator.test").info("plain")
    line = stream.getvalue().strip()
    assert line.endswith(" INFO cvm_prelaunch_operator.test: plain")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_formatter_reads_the_context_when_no_filter_stamped_the_record() -> None:
    record = logging.LogRecord("l", logging.INFO, __file__, 1, "m", None, sys.exc_info())
    with logcontext.bound("ns", "n"):
        entry = json.loads(JsonFormatter().format(record))
    assert entry["namespace"] == "ns" and entry["name"] == "n"


def test_warnings_and_an_uncaught_exception_are_json_lines_too() -> None:
    program = (
        "import warnings, threading\n"
        "from cvm_prelaunch_operator.logs import configure_logging\n"
        "from cvm_prelaunch_operator.settings import OperatorSettings\n"
        "configure_logging(OperatorSettings(log_format='json'))\n"
        "warnings.warn('a library complains')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n"
        "raise RuntimeError('boom\\nsecond line')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 1
    entries = [json.loads(line) for line in completed.stderr.splitlines()]
    assert [e["logger"] for e in entries] == [
        "py.warnings",
        "cvm_prelaunch_operator",
        "cvm_prelaunch_operator",
    ]
    assert "a library complains" in entries[0]["message"]
    assert entries[1]["message"] == "uncaught exception in thread worker"
    assert entries[1]["exception"].endswith("ZeroDivisionError: division by zero")
    assert entries[2]["level"] == "CRITICAL"
    assert entries[2]["exception"].endswith("RuntimeError: boom\nsecond line")
