"""A real operator on the local environment, scraped: every metric the alerts and the dashboard use
is one it exposes, and the per-resource series follow the resources (values, reasons, deletion)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from monitoring_kit import dashboard_exprs, metric_names, rule_exprs
from prometheus_client.parser import text_string_to_metric_families

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.operator_process import OperatorProcess
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

Labels = tuple[tuple[str, str], ...]


class Scrape:
    def __init__(self, text: str) -> None:
        self.families: set[str] = set()
        self.samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value

    def of(self, name: str, namespace: str) -> dict[str, float]:
        """A per-resource family of one namespace: resource name (and reason, if labelled) -> value."""
        out: dict[str, float] = {}
        for labels, value in self.samples.get(name, {}).items():
            as_dict = dict(labels)
            if as_dict.get("namespace") == namespace:
                key = as_dict["name"] + (f"/{as_dict['reason']}" if "reason" in as_dict else "")
                out[key] = value
        return out


def scrape_until(operator: OperatorProcess, check: Callable[[Scrape], bool], timeout: float = 15.0) -> Scrape:
    """The series follow the watch, a few milliseconds behind the API server."""
    deadline = time.monotonic() + timeout
    while True:
        scraped = Scrape(operator.metrics())
        if check(scraped) or time.monotonic() > deadline:
            return scraped
        time.sleep(0.1)


def test_every_metric_the_alerts_and_the_dashboard_use_is_exposed(
    setup: Workbench,
    offchain_cvm: SimTarget,
    onchain_cvm: SimTarget,
    operator_factory: OperatorFactory,
) -> None:
    operator = operator_factory()
    setup.create(offchain_cvm, name="plain")
    setup.create(onchain_cvm, name="chained")
    setup.synced("plain")
    setup.synced("chained")
    scraped = scrape_until(
        operator,
        lambda s: (
            s.of("cvm_prelaunch_resource_ready", setup.namespace) == {"plain/Synced": 1, "chained/Synced": 1}
        ),
    )
    used = metric_names(rule_exprs() + dashboard_exprs())
    assert len(used) >= 10
    # A name with samples, or a family the operator declares with none at this moment (the signer
    # balance before the core reports one, the approval times while nothing waits).
    exposed = set(scraped.samples) | scraped.families
    assert sorted(used - exposed) == []
    # The names the alerts rest on carry samples of these resources now.
    assert scraped.of("cvm_prelaunch_resource_stalled", setup.namespace) == {"plain": 0, "chained": 0}
    assert scraped.of("cvm_prelaunch_pending_approval", setup.namespace) == {"plain": 0, "chained": 0}
    last_sync = scraped.of("cvm_prelaunch_resource_last_sync_timestamp_seconds", setup.namespace)
    assert set(last_sync) == {"plain", "chained"}
    assert all(time.time() - 120 < t <= time.time() + 1 for t in last_sync.values())
    assert scraped.samples["cvm_prelaunch_reconciles_total"]


def test_per_resource_series_follow_reasons_and_deletions(
    setup: Workbench, offchain_cvm: SimTarget, operator_factory: OperatorFactory
) -> None:
    operator = operator_factory()
    setup.create(offchain_cvm, name="good")
    setup.synced("good")
    # A second resource whose ConfigMap does not exist: a permanent failure.
    scenario.apply(
        setup.cp,
        scenario.cvm_prelaunch_script(
            "orphan", setup.namespace, cvm_id=offchain_cvm.id, config_map="missing", api_key_secret="good-api"
        ),
    )
    setup.reason("orphan", "ConfigMapNotFound")
    body = scenario.get(setup.cp, setup.namespace, "orphan")
    stalled = scenario.condition(body, "Stalled").get("status") == "True"
    scraped = scrape_until(
        operator,
        lambda s: (
            s.of("cvm_prelaunch_resource_ready", setup.namespace)
            == {"good/Synced": 1, "orphan/ConfigMapNotFound": 0}
        ),
    )
    assert scraped.of("cvm_prelaunch_resource_ready", setup.namespace) == {
        "good/Synced": 1,
        "orphan/ConfigMapNotFound": 0,
    }
    assert scraped.of("cvm_prelaunch_resource_stalled", setup.namespace) == {
        "good": 0,
        "orphan": int(stalled),
    }
    assert set(scraped.of("cvm_prelaunch_resource_last_sync_timestamp_seconds", setup.namespace)) == {"good"}

    # Deleted: every series of the resource disappears at the next scrape; the other one stays.
    setup.cp.kubectl("delete", "cvmprelaunchscript", "orphan", "-n", setup.namespace, "--wait=true")
    gone = scrape_until(
        operator, lambda s: "orphan" not in json.dumps({n: list(v) for n, v in s.samples.items()})
    )
    for name, series in gone.samples.items():
        assert all(dict(labels).get("name") != "orphan" for labels in series), name
    assert gone.of("cvm_prelaunch_resource_ready", setup.namespace) == {"good/Synced": 1}


def test_a_pending_approval_is_reported_per_resource(
    setup: Workbench, gated_cvm: SimTarget, sim: SimulatorServer, operator_factory: OperatorFactory
) -> None:
    operator = operator_factory()
    setup.create(gated_cvm, name="gated", on_chain={"approval": "Manual"})
    body = setup.reason("gated", "AwaitingApproval")
    pending = (body.get("status") or {}).get("pendingApproval")
    if not pending:
        pytest.xfail(
            "the reconcile core does not write status.pendingApproval yet (the typed-state engine does)"
        )
    scraped = scrape_until(
        operator, lambda s: s.of("cvm_prelaunch_pending_approval", setup.namespace) == {"gated": 1}
    )
    assert scraped.of("cvm_prelaunch_pending_approval", setup.namespace) == {"gated": 1}
    since = scraped.of("cvm_prelaunch_pending_approval_since_timestamp_seconds", setup.namespace)
    assert set(since) == {"gated"}
    assert time.time() - 120 < since["gated"] <= time.time() + 1
    assert scraped.of("cvm_prelaunch_resource_ready", setup.namespace) == {"gated/AwaitingApproval": 0}
    # Nothing was uploaded past Phase 1 while the hash waits.
    assert not [r for r in sim.admin.requests() if r.method == "PATCH" and r.status == 202]


def test_the_signer_balance_is_reported_after_a_registration(
    setup: Workbench, onchain_cvm: SimTarget, operator_factory: OperatorFactory
) -> None:
    operator = operator_factory()
    setup.create(onchain_cvm, name="chained")
    body = setup.synced("chained")
    assert (body.get("status") or {}).get("transactionHash")
    signer = setup.anvil.accounts[0].address
    scraped = scrape_until(
        operator, lambda s: bool(s.samples.get("cvm_prelaunch_signer_balance_wei")), timeout=5
    )
    balances = scraped.samples.get("cvm_prelaunch_signer_balance_wei")
    if not balances:
        pytest.xfail("the reconcile core does not report signer balances yet (Observer.signer_balance)")
    chain_id = str(setup.anvil.chain_id)
    ((labels, wei),) = balances.items()
    assert dict(labels) == {"chain_id": chain_id, "address": signer}
    # Read before the registration was paid: at least what is left, and less than one fee more.
    left = setup.anvil.web3().eth.get_balance(signer)
    assert left <= wei < left + 10**17
