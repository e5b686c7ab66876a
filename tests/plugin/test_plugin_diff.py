"""``kubectl cpls diff`` against the Phala Cloud simulator: the CVM's script against the ConfigMap's."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from plugin_kit import Cluster, Cpls

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer

RUNNING = "#!/bin/sh\necho 'tuning the kernel'\nsysctl -w net.core.somaxconn=1024\n"
DESIRED = "#!/bin/sh\necho 'tuning the kernel'\nsysctl -w net.core.somaxconn=4096\n"


@pytest.fixture
def cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    return sim_cvm_factory(onchain=False, pre_launch_script=RUNNING)


def create(cluster: Cluster, cvm: SimTarget, script: str | None, *, api_key: str | None = None) -> None:
    bodies = [scenario.secret("web-api", cluster.namespace, {"api-key": api_key or cvm.api_key})]
    if script is not None:
        bodies.append(scenario.configmap("web-script", cluster.namespace, {"pre-launch.sh": script}))
    scenario.apply(cluster.cp, *bodies)
    cluster.create("web", cvm_id=cvm.id, config_map="web-script", api_key_secret="web-api")


def api_env(sim: SimulatorServer) -> dict[str, str]:
    return {"PHALA_CLOUD_API_URL": sim.base_url}


def test_equal_scripts_exit_0_and_print_nothing(
    cluster: Cluster, cpls: Cpls, cvm: SimTarget, sim: SimulatorServer
) -> None:
    create(cluster, cvm, RUNNING)

    run = cpls("diff", "web", env=api_env(sim))

    assert (run.code, run.out, run.err) == (0, "", "")
    # One read of the script, with the resource's API key, and nothing else.
    calls = [(r.method, r.path) for r in sim.admin.requests() if r.cvm == cvm.id or cvm.id in r.path]
    assert calls == [("GET", f"/api/v1/cvms/{cvm.id}/pre-launch-script")]


def test_different_scripts_exit_1_with_a_unified_diff(
    cluster: Cluster, cpls: Cpls, cvm: SimTarget, sim: SimulatorServer
) -> None:
    create(cluster, cvm, DESIRED)

    run = cpls("diff", "web", env=api_env(sim))

    assert run.code == 1, run.err
    assert run.out == (
        f"--- cvm/{cvm.id} (running)\n"
        "+++ configmap/web-script/pre-launch.sh (desired)\n"
        "@@ -1,3 +1,3 @@\n"
        " #!/bin/sh\n"
        " echo 'tuning the kernel'\n"
        "-sysctl -w net.core.somaxconn=1024\n"
        "+sysctl -w net.core.somaxconn=4096\n"
    )
    assert cvm.api_key not in run.out + run.err


def test_a_change_on_the_server_shows_up(
    cluster: Cluster, cpls: Cpls, cvm: SimTarget, sim: SimulatorServer
) -> None:
    create(cluster, cvm, RUNNING)
    assert cpls("diff", "web", env=api_env(sim)).code == 0
    sim.admin.update_cvm(cvm.id, pre_launch_script="#!/bin/sh\necho changed by hand")

    run = cpls("diff", "web", "--api-url", sim.base_url)

    assert run.code == 1, run.err
    assert "-echo changed by hand\n\\ No newline at end of file\n" in run.out
    assert "+echo 'tuning the kernel'\n" in run.out


def test_binary_data_is_compared_byte_for_byte(
    cluster: Cluster, cpls: Cpls, cvm: SimTarget, sim: SimulatorServer
) -> None:
    scenario.apply(
        cluster.cp,
        scenario.secret("web-api", cluster.namespace, {"api-key": cvm.api_key}),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web-script", "namespace": cluster.namespace},
            "binaryData": {"pre-launch.sh": base64.b64encode(RUNNING.encode()).decode()},
        },
    )
    cluster.create("web", cvm_id=cvm.id, config_map="web-script", api_key_secret="web-api")

    assert cpls("diff", "web", env=api_env(sim)).code == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"script": None}, "configmap", id="no-configmap"),
        pytest.param({"api_key": "phak_not_the_right_key_at_all"}, "401", id="wrong-api-key"),
    ],
)
def test_trouble_exits_2_and_never_prints_the_key(
    cluster: Cluster,
    cpls: Cpls,
    cvm: SimTarget,
    sim: SimulatorServer,
    change: dict[str, Any],
    message: str,
) -> None:
    create(cluster, cvm, change.get("script", RUNNING), api_key=change.get("api_key"))

    run = cpls("diff", "web", env=api_env(sim))

    assert run.code == 2
    assert run.err.startswith("error: ") and message in run.err
    for secret in (cvm.api_key, change.get("api_key")):
        if secret:
            assert secret not in run.out + run.err


def test_a_missing_secret_exits_2(cluster: Cluster, cpls: Cpls, cvm: SimTarget, sim: SimulatorServer) -> None:
    scenario.apply(
        cluster.cp, scenario.configmap("web-script", cluster.namespace, {"pre-launch.sh": RUNNING})
    )
    cluster.create("web", cvm_id=cvm.id, config_map="web-script", api_key_secret="web-api")

    run = cpls("diff", "web", env=api_env(sim))

    assert run.code == 2
    assert "secret" in run.err and "web-api" in run.err and "not found" in run.err


def test_an_unusable_api_url_exits_2_before_reading_anything(cluster: Cluster, cpls: Cpls) -> None:
    # Plain http to a remote host would carry the API key in the clear: refused like the operator does.
    run = cpls("diff", "web", "--api-url", "http://cloud-api.example.com/api/v1")
    assert run.code == 2
    assert "plain http" in run.err


def test_a_missing_resource_exits_2(cluster: Cluster, cpls: Cpls, sim: SimulatorServer) -> None:
    run = cpls("diff", "nope", env=api_env(sim))
    assert run.code == 2 and "not found" in run.err
