"""LOG_FORMAT=json on a real operator process: every line of its output is one JSON object, lines
about a resource say which, and no secret the resources use appears anywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.scenario import Workbench


def test_json_logs_are_one_object_per_line_and_name_the_resource(
    setup: Workbench, onchain_cvm: SimTarget, offchain_cvm: SimTarget, operator_factory: OperatorFactory
) -> None:
    operator = operator_factory(extra_env={"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"})
    setup.create(onchain_cvm, name="chained")
    setup.create(offchain_cvm, name="plain")
    setup.synced("chained")
    setup.synced("plain")
    # A failure, so that warning paths log too.
    scenario.apply(
        setup.cp,
        scenario.cvm_prelaunch_script(
            "orphan",
            setup.namespace,
            cvm_id=offchain_cvm.id,
            config_map="missing",
            api_key_secret="plain-api",
        ),
    )
    setup.reason("orphan", "ConfigMapNotFound")
    operator.wait_for_log("orphan", timeout=10)

    output = operator.logs()
    lines = output.splitlines()
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"line {number} of the operator's output is not JSON: {line[:300]!r}")
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    assert any(e["message"].startswith("cvm-prelaunch-operator ") for e in entries)

    # No secret of the resources, in any field.
    for secret in (onchain_cvm.api_key, offchain_cvm.api_key, setup.anvil.accounts[0].private_key.reveal()):
        assert secret not in output
        assert secret.removeprefix("0x") not in output

    about = [e for e in entries if "orphan" in e["message"] or e.get("name") == "orphan"]
    assert about, "the operator logged nothing about the failing resource"
    if not any("name" in e for e in entries):
        pytest.xfail("the reconcile core does not set the log context yet (domain.logcontext.bound)")
    for entry in about:
        assert entry.get("namespace") == setup.namespace and entry.get("name") == "orphan", entry
