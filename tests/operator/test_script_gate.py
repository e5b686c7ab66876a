"""The script gate end to end: a script that fails its checks never reaches Phala Cloud (the
simulator's request log shows no PATCH), the resource says why with line numbers, and fixing the
ConfigMap syncs it."""

from __future__ import annotations

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

BROKEN = "#!/bin/bash\necho starting\nif [ -f /tmp/x ]; then\n  echo found\nfi fi\n"
SHELLCHECK_ERROR = '#!/bin/sh\nname="$1"\nif [ -n $name ]; then\n  echo "set"\nfi\n'  # SC2070
CLEAN = '#!/bin/sh\nname="${1:-}"\nif [ -n "$name" ]; then\n  echo "set"\nfi\n'


def refused(setup: Workbench, name: str) -> dict[str, object]:
    """The resource once it is refused (or, failing fast, once it synced anyway)."""
    body = setup.wait(
        name,
        lambda b: scenario.condition(b).get("reason") in {"InvalidScript", "Synced"},
        "reason InvalidScript",
        timeout=30,
    )
    assert scenario.condition(body).get("reason") == "InvalidScript", scenario.condition(body)
    return dict(body)


def patches_of(sim: SimulatorServer, cvm: SimTarget) -> list[int | None]:
    return [
        r.status
        for r in sim.admin.requests()
        if r.method == "PATCH" and cvm.id in r.path and "pre-launch" in r.path
    ]


def test_a_syntax_error_is_never_uploaded_and_a_fix_syncs(
    setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer, operator_factory: OperatorFactory
) -> None:
    operator_factory()
    setup.create(offchain_cvm, name="broken", script=BROKEN)
    body = refused(setup, "broken")
    message = scenario.condition(body)["message"]
    assert "bash -n" in message and "line 5: syntax error" in message, message
    assert scenario.condition(body, "Stalled")["status"] == "True"
    assert patches_of(sim, offchain_cvm) == []

    scenario.patch_configmap(setup.cp, setup.namespace, "broken-script", {"pre-launch.sh": CLEAN})
    setup.synced("broken")
    assert patches_of(sim, offchain_cvm) == [202]
    assert sim.admin.cvm_state(offchain_cvm.id)["pre_launch_script"] == CLEAN


def test_shellcheck_at_error_blocks_an_error_finding_and_passes_a_clean_script(
    setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer, operator_factory: OperatorFactory
) -> None:
    operator_factory()
    setup.create(offchain_cvm, name="linted", script=SHELLCHECK_ERROR, scriptCheck={"shellcheck": "Error"})
    body = refused(setup, "linted")
    message = scenario.condition(body)["message"]
    assert "shellcheck" in message and "line 3: SC2070" in message, message
    assert patches_of(sim, offchain_cvm) == []

    scenario.patch_configmap(setup.cp, setup.namespace, "linted-script", {"pre-launch.sh": CLEAN})
    setup.synced("linted")
    assert patches_of(sim, offchain_cvm) == [202]
