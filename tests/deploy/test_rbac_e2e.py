"""The install path end to end: `deploy/` applied with kubectl on the real local kube-apiserver, the
operator run with nothing but its ServiceAccount's token (TokenRequest), and its RBAC proven
permission by permission: with all of them the on-chain flow reaches Synced, and without any single
one the operator fails in the way that permission explains.

The Deployment never runs (no kubelet); the operator runs as a local process holding the token a pod
of that Deployment would hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from rbac_install import (
    CLUSTER_ROLE,
    CLUSTER_WIDE,
    LEASE_ROLE,
    NAMESPACED,
    OPERATOR_NAMESPACE,
    RULES_SOURCE,
    SERVICE_ACCOUNT,
    SERVICE_ACCOUNT_USER,
    AccessReviewer,
    Manifest,
    Permission,
    apply_role,
    delete_lease,
    install,
    lease_role_source,
    log_lines,
    mint_token,
    named,
    one_of_kind,
    permissions_of,
    render,
    uninstall,
    watched_namespaces,
    whoami,
    without,
)

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.operator_process import OperatorProcess
from cvm_prelaunch_localenv.scenario import SCRIPT_V1, SCRIPT_V2, Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.domain.retry import RetryPolicy
from cvm_prelaunch_operator.kube.leader import RENEW_DEADLINE

# With every permission the operator syncs an on-chain CVM, re-syncs a ConfigMap edit and takes a
# rotated API key within this window (measured: under 1 s each, on 2 cores at load 3); without one
# permission, the symptom it explains must last at least as long.
SYNC_WINDOW = 6.0
# A successful sync is waited for longer: after the upload, the core polls the update operation on its
# own schedule (2 s, then 4 s, ...), which is not what these tests are about.
SYNC_TIMEOUT = 30.0
# Inputs are applied this long before the resource that references them, so their watch events
# reach the operator while nothing references them yet (as after a restart, or for inputs a user
# applies first): the operator has to GET them.
INPUTS_AHEAD = 1.0
# How long the operator may take to show a symptom that does not depend on the window.
SYMPTOM_TIMEOUT = 20.0
WRONG_API_KEY = "phak_rbac_e2e_wrong_key"

# The one list of the operator's permissions (the overlays render it into the ClusterRole or Roles).
SOURCE_ROLE: Manifest = yaml.safe_load(RULES_SOURCE.read_text())
PERMISSIONS = permissions_of(SOURCE_ROLE)
# And the leader Lease's, granted by a Role in the operator's namespace in both install paths.
LEASE_PERMISSIONS = permissions_of(lease_role_source())


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class App:
    """One CvmPreLaunchScript with its inputs, driven by the operator under test."""

    bench: Workbench
    target: SimTarget
    name: str = "app"

    @property
    def cp(self) -> ControlPlane:
        return self.bench.cp

    @property
    def namespace(self) -> str:
        return self.bench.namespace

    def inputs(self, api_key: str | None = None) -> list[Manifest]:
        ns, name = self.namespace, self.name
        bodies = [
            scenario.configmap(f"{name}-script", ns, {"pre-launch.sh": SCRIPT_V1}),
            scenario.secret(f"{name}-api", ns, {"api-key": api_key or self.target.api_key}),
        ]
        if self.target.contract is not None:
            signer_key = self.bench.anvil.accounts[0].private_key.reveal()
            bodies.append(scenario.secret(f"{name}-signer", ns, {"private-key": signer_key}))
        return bodies

    def resource(self) -> Manifest:
        on_chain = None
        if self.target.contract is not None:
            on_chain = {
                "rpcUrl": self.bench.anvil.rpc_url,
                "signerKeySecretRef": {"name": f"{self.name}-signer", "key": "private-key"},
            }
        return scenario.cvm_prelaunch_script(
            self.name,
            self.namespace,
            cvm_id=self.target.id,
            config_map=f"{self.name}-script",
            api_key_secret=f"{self.name}-api",
            on_chain=on_chain,
        )

    def create(self, api_key: str | None = None) -> float:
        """Inputs first, the resource INPUTS_AHEAD later; returns when the resource was created."""
        scenario.apply(self.cp, *self.inputs(api_key))
        time.sleep(INPUTS_AHEAD)
        scenario.apply(self.cp, self.resource())
        return time.monotonic()

    def get(self) -> dict[str, Any]:
        return scenario.get(self.cp, self.namespace, self.name)

    def synced(self, script: str = SCRIPT_V1, timeout: float = SYNC_TIMEOUT) -> dict[str, Any]:
        want = sha256(script)
        body: dict[str, Any] = self.bench.wait(
            self.name,
            lambda b: scenario.is_synced(b) and b["status"].get("scriptSha256") == want,
            f"Synced with script sha256 {want[:12]}",
            timeout,
        )
        return body

    def stays(self, predicate: Callable[[Mapping[str, Any]], bool], what: str, until: float) -> None:
        """``predicate`` holds on every read until the monotonic time ``until``."""
        while True:
            body = self.get()
            assert predicate(body), f"{self.namespace}/{self.name}: no longer {what}: {body.get('status')}"
            if time.monotonic() >= until:
                return
            time.sleep(0.2)

    def edit_script(self, script: str) -> float:
        scenario.patch_configmap(self.cp, self.namespace, f"{self.name}-script", {"pre-launch.sh": script})
        return time.monotonic()

    def rotate_api_key(self) -> float:
        key = {"api-key": self.target.api_key}
        scenario.apply(self.cp, scenario.secret(f"{self.name}-api", self.namespace, key))
        return time.monotonic()

    def event_reasons(self) -> list[str]:
        listed = self.cp.kubectl(
            "get", "events", "-n", self.namespace, "-o", "jsonpath={range .items[*]}{.reason}{'\\n'}{end}"
        )
        return listed.stdout.split()

    def phala_writes(self, sim: SimulatorServer) -> list[str]:
        return [
            f"{r.method} {r.path}"
            for r in sim.admin.requests()
            if r.method != "GET" and (r.cvm == self.target.id or self.target.id in r.path)
        ]


def no_status(body: Mapping[str, Any]) -> bool:
    return not body.get("status")


def ready_message(body: Mapping[str, Any]) -> str:
    return str(scenario.condition(body).get("message", ""))


def wait_for_log(operator: OperatorProcess, *needles: str, timeout: float = SYMPTOM_TIMEOUT) -> str:
    """The first operator log line containing all ``needles``."""
    deadline = time.monotonic() + timeout
    while True:
        found = next(log_lines(operator.logs(), *needles), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            tail = "\n".join(operator.logs().splitlines()[-30:])
            raise TimeoutError(f"operator log never showed {needles!r}; its tail:\n{tail}")
        time.sleep(0.1)


# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Installed:
    """An overlay applied with kubectl, and the operator's identity from it."""

    cp: ControlPlane
    overlay: str
    docs: list[Manifest]
    kubeconfig: Path
    token: str  # a credential: never printed, never in an assertion message
    reviewer: AccessReviewer

    def cluster_role(self) -> Manifest:
        """The ClusterRole as the overlay renders it: exactly the rules of RULES_SOURCE."""
        role = one_of_kind(self.docs, "ClusterRole")
        assert role["metadata"]["name"] == CLUSTER_ROLE
        assert permissions_of(role) == PERMISSIONS
        return role

    def lease_role(self) -> Manifest:
        """The leader Lease's Role as the overlay renders it, in the operator's namespace."""
        role = named(self.docs, "Role", LEASE_ROLE, OPERATOR_NAMESPACE)
        assert permissions_of(role) == LEASE_PERMISSIONS
        return role

    def start_operator(self, operator_factory: OperatorFactory) -> OperatorProcess:
        """The operator with this identity only, watching what the overlay's Deployment says, and
        electing itself leader on the Lease in its namespace as a replica of the Deployment does."""
        delete_lease(self.cp)
        operator = operator_factory(
            kubeconfig=self.kubeconfig,
            namespaces=watched_namespaces(self.docs),
            lease_namespace=OPERATOR_NAMESPACE,
        )
        operator.wait_for_log("starting")
        return operator


@contextlib.contextmanager
def installed(cp: ControlPlane, overlay: str, kubeconfig: Path) -> Iterator[Installed]:
    install(cp, overlay)
    try:
        token = mint_token(cp)
        cp.kubeconfig_for_token(token, kubeconfig, user=SERVICE_ACCOUNT)
        assert whoami(cp, kubeconfig) == SERVICE_ACCOUNT_USER
        reviewer = AccessReviewer(cp, token)
        try:
            yield Installed(cp, overlay, render(overlay), kubeconfig, token, reviewer)
        finally:
            reviewer.close()
    finally:
        uninstall(cp, overlay)


@pytest.fixture(scope="module")
def cluster_wide(
    control_plane: ControlPlane, crd: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """The cluster-wide overlay, installed once for this module; tests edit its ClusterRole."""
    with installed(control_plane, CLUSTER_WIDE, tmp_path_factory.mktemp("sa") / "kubeconfig") as done:
        yield done


def grant(
    cp: ControlPlane, install: Installed, role: Manifest, namespace: str, lease_role: Manifest | None = None
) -> None:
    """Make ``role`` the ClusterRole and ``lease_role`` (by default the overlay's) the Lease's Role, and
    wait until the apiserver authorizes exactly that."""
    lease_role = lease_role or install.lease_role()
    apply_role(cp, role)
    apply_role(cp, lease_role)
    granted = set(permissions_of(role))
    expected = {p: p in granted for p in PERMISSIONS}
    install.reviewer.wait_for(expected, namespace=None)  # cluster-wide lists and watches
    install.reviewer.wait_for(expected, namespace=namespace)
    granted = set(permissions_of(lease_role))
    install.reviewer.wait_for({p: p in granted for p in LEASE_PERMISSIONS}, namespace=OPERATOR_NAMESPACE)


# kopf observes Namespaces and CRDs to follow them at run time. The operator is not granted that: kopf
# logs the refusals and falls back to the namespaces it was given and the resources that API
# discovery (open to every authenticated client) found at start-up.
KOPF_OBSERVATION = {("list", "customresourcedefinitions"), ("list", "namespaces"), ("watch", "namespaces")}
# The backoffs with which kopf repeats a refused request before it falls back: a namespaced operator
# watches nothing until its listing of Namespaces has been refused this long.
_KOPF_BACKOFFS = kopf.OperatorSettings().networking.error_backoffs
KOPF_FALLBACK_SECONDS = float(sum(_KOPF_BACKOFFS) if isinstance(_KOPF_BACKOFFS, Iterable) else _KOPF_BACKOFFS)


def refused_requests(operator: OperatorProcess) -> set[tuple[str, str]]:
    """(verb, resource) of the requests the apiserver refused the operator, as kopf logs them."""
    return set(re.findall(r'cannot (\w+) resource "([\w/]+)"', operator.logs()))


def forbidden(verb: str, resource: str, group: str = "") -> str:
    """The apiserver's wording of a cluster-scope RBAC refusal, as kopf logs it."""
    return f'cannot {verb} resource "{resource}" in API group "{group}" at the cluster scope'


# --- with every permission: the full flow -------------------------------------------------------


def test_namespaced_install_syncs_in_its_namespaces_as_its_service_account(
    control_plane: ControlPlane,
    crd: Path,
    anvil: Anvil,
    sim: SimulatorServer,
    sim_cvm_factory: SimCvmFactory,
    operator_factory: OperatorFactory,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Roles in the overlay's namespaces only, and the operator watching exactly those."""
    cp = control_plane
    namespaces = watched_namespaces(render(NAMESPACED))
    assert namespaces, "the namespaced overlay names the namespaces it watches"
    # The README: the watched namespaces must exist before the install.
    created = [n for n in namespaces if cp.kubectl("get", "namespace", n, check=False).returncode != 0]
    for name in created:
        cp.create_namespace(name)
    try:
        with installed(cp, NAMESPACED, tmp_path / "kubeconfig") as install:
            everything = {p: True for p in PERMISSIONS}
            for name in namespaces:
                install.reviewer.wait_for(everything, namespace=name)
            nothing = {p: False for p in PERMISSIONS + LEASE_PERMISSIONS}
            install.reviewer.wait_for(nothing, namespace=None)  # no cluster-wide grant at all
            # The Lease in the operator's own namespace only.
            install.reviewer.wait_for({p: True for p in LEASE_PERMISSIONS}, namespace=OPERATOR_NAMESPACE)
            install.reviewer.wait_for({p: False for p in LEASE_PERMISSIONS}, namespace=namespace)

            operator = install.start_operator(operator_factory)
            assert namespace not in namespaces
            outside = App(Workbench(cp, namespace, anvil), sim_cvm_factory(onchain=False))
            outside_created = outside.create()
            app = App(
                Workbench(cp, namespaces[0], anvil), sim_cvm_factory(onchain=True, allow_any_device=True)
            )
            created_at = app.create()
            # Seen at once: its first upload reaches Phala Cloud promptly (the whole sync then takes as
            # long as the core's operation polling makes it).
            deadline = created_at + KOPF_FALLBACK_SECONDS + SYNC_WINDOW
            while not app.phala_writes(sim) and time.monotonic() < deadline:
                time.sleep(0.05)
            seconds_to_upload = time.monotonic() - created_at
            body = app.synced(timeout=KOPF_FALLBACK_SECONDS + SYNC_WINDOW)
            # A namespace that is not in the overlay's list is neither watched nor readable.
            outside.stays(no_status, "without status", until=outside_created + SYNC_WINDOW)
            assert anvil.web3().eth.get_transaction_receipt(body["status"]["transactionHash"])["status"] == 1
            assert {"RegistrationSent", "RegistrationConfirmed", "Applied"} <= set(app.event_reasons())
            assert refused_requests(operator) <= KOPF_OBSERVATION
            assert install.token not in operator.logs()
            operator.kill()  # before its Roles go
    finally:
        for name in created:
            cp.delete_namespace(name)
    if seconds_to_upload > SYNC_WINDOW:
        pytest.fail(
            f"Synced, but uploaded only {seconds_to_upload:.0f}s after the resource was created: kopf "
            f"retries its refused listing of Namespaces for {KOPF_FALLBACK_SECONDS:.0f}s before it watches "
            "the namespaces it was given. settings.scanning.disabled = True (kopf's strict mode) in the "
            "operator's startup handler removes the delay and the refused requests."
        )


def test_cluster_wide_install_syncs_as_its_service_account(
    control_plane: ControlPlane,
    cluster_wide: Installed,
    namespace: str,
    anvil: Anvil,
    sim: SimulatorServer,
    sim_cvm_factory: SimCvmFactory,
    operator_factory: OperatorFactory,
) -> None:
    """The full on-chain flow as the ServiceAccount, and each behaviour a permission is proven
    necessary for below, each within the window the failures are held to."""
    cp = control_plane
    grant(cp, cluster_wide, cluster_wide.cluster_role(), namespace)
    assert watched_namespaces(cluster_wide.docs) == ()
    operator = cluster_wide.start_operator(operator_factory)

    app = App(Workbench(cp, namespace, anvil), sim_cvm_factory(onchain=True, allow_any_device=True))
    app.create()
    body = app.synced()
    status = body["status"]
    assert status["composeHash"] == "0x" + sim.admin.cvm_state(app.target.id)["compose_hash"]
    assert anvil.web3().eth.get_transaction_receipt(status["transactionHash"])["status"] == 1
    for reason in ("RegistrationSent", "RegistrationConfirmed", "UpdateAccepted", "Applied"):
        assert reason in app.event_reasons()

    # A ConfigMap edit is synced at once (the ConfigMap watch).
    app.edit_script(SCRIPT_V2)
    app.synced(SCRIPT_V2)
    assert sim.admin.cvm_state(app.target.id)["pre_launch_script"] == SCRIPT_V2

    # A rotated API key ends a permanent failure at once (the Secret watch).
    rotated = App(app.bench, sim_cvm_factory(onchain=True, allow_any_device=True), name="rotated")
    rotated.create(api_key=WRONG_API_KEY)
    rotated.bench.reason(rotated.name, "Unauthorized", timeout=SYNC_TIMEOUT)
    rotated.rotate_api_key()
    rotated.synced()

    assert refused_requests(operator) <= KOPF_OBSERVATION, "no request of the operator's own was refused"
    assert cluster_wide.token not in operator.logs()
    operator.kill()  # its graceful stop takes seconds and is not what this test is about


# --- without one permission: the failure it explains --------------------------------------------


@dataclass
class Case:
    app: App
    operator: OperatorProcess
    sim: SimulatorServer
    # Defects the case revealed besides its symptom (each fails the test).
    defects: list[str] = field(default_factory=list)
    # The symptom is a deliberate exit (a leader that cannot renew its Lease), not a crash.
    exits: bool = False

    def check_backoff(self, created: float) -> None:
        """A refused read is retried with the operator's backoff, not in a loop."""
        failures = int(self.app.get()["status"].get("failures") or 0)
        seconds = time.monotonic() - created
        allowed = retries_within(seconds)
        if failures > allowed:
            self.defects.append(
                f"{failures} failed passes in {seconds:.0f}s where the backoff allows "
                f"{allowed}: a failed pass must not start the next one before status.nextRetryTime "
                "(its own status write's watch event included)"
            )


def retries_within(seconds: float) -> int:
    """The most failed passes the operator's backoff allows in ``seconds`` (each delay at its
    shortest, half of 2 s, 4 s, 8 s, ...), plus one for slack."""
    passes, elapsed = 1, _POLICY.backoff(1, rng=_SHORTEST)
    while elapsed <= seconds:
        passes += 1
        elapsed += _POLICY.backoff(passes, rng=_SHORTEST)
    return passes + 1


class _NoJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


_SHORTEST = _NoJitter()
_POLICY = RetryPolicy()  # the defaults, as the Deployment runs the operator


def _no_status_and_no_remote_write(case: Case, created: float) -> None:
    case.app.stays(no_status, "without status", until=created + SYNC_WINDOW)
    assert case.app.phala_writes(case.sim) == [], "nothing may change remotely without a status record"


def fails_without_get_resource(case: Case) -> None:
    """A process's first pass over a resource starts from a GET: refused, so nothing is done and
    nothing written."""
    created = case.app.create()
    wait_for_log(case.operator, f"{case.app.namespace}/app: reconcile failed", "reading", "HTTP 403")
    _no_status_and_no_remote_write(case, created)


def fails_without_list_resource(case: Case) -> None:
    """kopf cannot list the resources, so the operator never learns of any."""
    created = case.app.create()
    wait_for_log(case.operator, forbidden("list", "cvmprelaunchscripts", "cloud.phala.com"))
    _no_status_and_no_remote_write(case, created)


def fails_without_watch_resource(case: Case) -> None:
    """The initial listing works, but a resource created after it is never seen."""
    wait_for_log(case.operator, forbidden("watch", "cvmprelaunchscripts", "cloud.phala.com"))
    created = case.app.create()
    _no_status_and_no_remote_write(case, created)


def fails_without_patch_status(case: Case) -> None:
    """The in-flight record cannot be written first, so no remote call is made at all."""
    created = case.app.create()
    wait_for_log(case.operator, f"writing the status of {case.app.namespace}/app: HTTP 403")
    _no_status_and_no_remote_write(case, created)


def fails_without_get_configmaps(case: Case) -> None:
    """A ConfigMap that existed before its resource must be read with a GET: refused."""
    created = case.app.create()
    body = case.app.bench.wait(
        "app", lambda b: "ConfigMap" in ready_message(b), "a ConfigMap read failure", SYMPTOM_TIMEOUT
    )
    assert "HTTP 403" in ready_message(body) and f"{case.app.namespace}/app-script" in ready_message(body)
    case.app.stays(lambda b: not scenario.is_synced(b), "not Synced", until=created + SYNC_WINDOW)
    assert case.app.phala_writes(case.sim) == []
    case.check_backoff(created)


def _edit_not_picked_up(case: Case, verb: str) -> None:
    case.app.create()
    case.app.synced(timeout=SYMPTOM_TIMEOUT)  # the ConfigMap is read with a GET
    wait_for_log(case.operator, forbidden(verb, "configmaps"))
    edited = case.app.edit_script(SCRIPT_V2)
    v1 = sha256(SCRIPT_V1)
    case.app.stays(
        lambda b: b["status"]["scriptSha256"] == v1, "at the old script", until=edited + SYNC_WINDOW
    )
    assert case.sim.admin.cvm_state(case.app.target.id)["pre_launch_script"] == SCRIPT_V1


def fails_without_list_configmaps(case: Case) -> None:
    """Syncs once, but an edit of the script is never noticed."""
    _edit_not_picked_up(case, "list")


def fails_without_watch_configmaps(case: Case) -> None:
    """Syncs once, but an edit of the script is never noticed."""
    _edit_not_picked_up(case, "watch")


def fails_without_get_secrets(case: Case) -> None:
    """Secret values are always read fresh with a GET: refused, so Phala Cloud is never called."""
    created = case.app.create()
    body = case.app.bench.wait(
        "app", lambda b: "Secret" in ready_message(b), "a Secret read failure", SYMPTOM_TIMEOUT
    )
    assert "HTTP 403" in ready_message(body) and f"{case.app.namespace}/app-" in ready_message(body)
    case.app.stays(lambda b: not scenario.is_synced(b), "not Synced", until=created + SYNC_WINDOW)
    assert case.app.phala_writes(case.sim) == []
    case.check_backoff(created)


def _rotation_not_picked_up(case: Case, verb: str) -> None:
    case.app.create(api_key=WRONG_API_KEY)
    case.app.bench.reason("app", "Unauthorized", timeout=SYMPTOM_TIMEOUT)
    wait_for_log(case.operator, forbidden(verb, "secrets"))
    rotated = case.app.rotate_api_key()
    case.app.stays(scenario.has_reason("Unauthorized"), "Unauthorized", until=rotated + SYNC_WINDOW)


def fails_without_list_secrets(case: Case) -> None:
    """A permanent failure waits for its inputs to change: a rotated API key is never noticed."""
    _rotation_not_picked_up(case, "list")


def fails_without_watch_secrets(case: Case) -> None:
    """A permanent failure waits for its inputs to change: a rotated API key is never noticed."""
    _rotation_not_picked_up(case, "watch")


def fails_without_create_events(case: Case) -> None:
    """The sync itself succeeds, but users see none of the Events that report its progress."""
    case.app.create()
    case.app.synced(timeout=SYMPTOM_TIMEOUT)
    line = wait_for_log(case.operator, "could not record event RegistrationSent", "HTTP 403")
    assert f"{case.app.namespace}/app" in line
    assert case.app.event_reasons() == []


def _never_leads(case: Case, what: str) -> None:
    """The operator cannot hold the Lease: it keeps watching as a standby and reconciles nothing."""
    created = case.app.create()
    wait_for_log(case.operator, f"could not {what} Lease", "HTTP 403")
    _no_status_and_no_remote_write(case, created)
    assert "cvm_prelaunch_leader 0.0" in case.operator.metrics()


def fails_without_get_leases(case: Case) -> None:
    """Every election starts by reading the Lease: refused, so the operator never leads."""
    _never_leads(case, "read")


def fails_without_create_leases(case: Case) -> None:
    """The first replica creates the Lease: refused, so there is never a leader."""
    _never_leads(case, "create")


def fails_without_update_leases(case: Case) -> None:
    """The Lease is created and held, but never renewed: at the renew deadline the operator stops
    every side effect and exits (restarted, it would wait as a standby for good).

    That it led meanwhile is shown by a status it wrote, not by a finished sync: the registration
    waits for a block, and on the suite's shared chain (which mines on demand) the interval learned
    from its sparse blocks can put the first look after the broadcast past the renew deadline."""
    case.app.create()
    case.app.bench.wait(
        case.app.name,
        lambda b: (b.get("status") or {}).get("observedGeneration") is not None,
        "a status written by the leader",
        SYMPTOM_TIMEOUT,
    )
    wait_for_log(case.operator, "could not update Lease", "HTTP 403")
    assert case.operator.wait_exit(timeout=RENEW_DEADLINE + SYMPTOM_TIMEOUT) == 1
    assert "renew deadline passed" in case.operator.logs()
    case.exits = True


SYMPTOMS: dict[Permission, Callable[[Case], None]] = {
    Permission("cloud.phala.com", "cvmprelaunchscripts", "get"): fails_without_get_resource,
    Permission("cloud.phala.com", "cvmprelaunchscripts", "list"): fails_without_list_resource,
    Permission("cloud.phala.com", "cvmprelaunchscripts", "watch"): fails_without_watch_resource,
    Permission("cloud.phala.com", "cvmprelaunchscripts/status", "patch"): fails_without_patch_status,
    Permission("", "configmaps", "get"): fails_without_get_configmaps,
    Permission("", "configmaps", "list"): fails_without_list_configmaps,
    Permission("", "configmaps", "watch"): fails_without_watch_configmaps,
    Permission("", "secrets", "get"): fails_without_get_secrets,
    Permission("", "secrets", "list"): fails_without_list_secrets,
    Permission("", "secrets", "watch"): fails_without_watch_secrets,
    Permission("", "events", "create"): fails_without_create_events,
    Permission("coordination.k8s.io", "leases", "get"): fails_without_get_leases,
    Permission("coordination.k8s.io", "leases", "create"): fails_without_create_leases,
    Permission("coordination.k8s.io", "leases", "update"): fails_without_update_leases,
}


def test_every_permission_has_a_proven_symptom() -> None:
    """A permission added to deploy/rbac/rules or deploy/rbac/leader-election needs a case here, and
    every case a permission."""
    assert set(SYMPTOMS) == set(PERMISSIONS) | set(LEASE_PERMISSIONS)


@pytest.mark.parametrize("removed", PERMISSIONS + LEASE_PERMISSIONS, ids=lambda p: p.id)
def test_operator_fails_without(
    removed: Permission,
    control_plane: ControlPlane,
    cluster_wide: Installed,
    namespace: str,
    anvil: Anvil,
    sim: SimulatorServer,
    sim_cvm_factory: SimCvmFactory,
    operator_factory: OperatorFactory,
) -> None:
    if removed in LEASE_PERMISSIONS:
        lease_role = without(cluster_wide.lease_role(), removed)
        grant(control_plane, cluster_wide, cluster_wide.cluster_role(), namespace, lease_role)
    else:
        grant(control_plane, cluster_wide, without(cluster_wide.cluster_role(), removed), namespace)
    operator = cluster_wide.start_operator(operator_factory)
    target = sim_cvm_factory(onchain=True, allow_any_device=True)
    case = Case(App(Workbench(control_plane, namespace, anvil), target), operator, sim)
    SYMPTOMS[removed](case)

    assert case.exits or operator.alive(), "a missing permission is reported, never a crash"
    # Only the removed permission was refused (kopf words list and watch refusals in its log).
    assert refused_requests(operator) - KOPF_OBSERVATION <= {(removed.verb, removed.resource)}
    assert cluster_wide.token not in operator.logs()
    operator.kill()  # its graceful stop takes seconds and is not what this test is about
    assert not case.defects, "; ".join(case.defects)
