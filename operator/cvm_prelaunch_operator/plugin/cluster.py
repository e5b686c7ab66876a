"""The plugin's access to the cluster: the user's kubeconfig, context and namespace, as kubectl uses them.

Every request has a timeout and the client retries a failed connection at most twice, so no command
waits on an unreachable API server for long. Errors become :class:`PluginError` with the API server's
own message (Kubernetes error bodies carry no credentials); a transport failure is named by its
kind only.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from cvm_prelaunch_operator.domain.resource import GROUP, PLURAL, VERSION
from cvm_prelaunch_operator.domain.secrets import Secret

MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "kubectl-cpls"
"""Named in managedFields, so ``kubectl get -o yaml --show-managed-fields`` tells who approved."""
CONNECT_RETRIES = 2
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Body = dict[str, Any]


class PluginError(Exception):
    """A command could not do what it was asked; the message is for the user, already safe to print."""


class NotFound(PluginError):
    pass


class Conflict(PluginError):
    """The object changed since it was read (a resourceVersion precondition failed)."""


@dataclass(frozen=True)
class KubeTarget:
    """Where commands go: a configured API client and the namespace kubectl would use."""

    api: k8s.ApiClient
    namespace: str
    timeout: float


def connect(
    *, kubeconfig: str | None, context: str | None, namespace: str | None, timeout: float
) -> KubeTarget:
    """The kubeconfig as kubectl finds it (``--kubeconfig``, else ``KUBECONFIG``, a list of files
    merged in order, else ``~/.kube/config``; in a pod without one, the pod's service account), the
    context (``--context`` or the current one) and the namespace (``-n``, else the context's, else
    ``default``)."""
    configuration = k8s.Configuration()
    config_file = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    files = [Path(p).expanduser() for p in config_file.split(os.pathsep) if p]
    in_cluster = (
        kubeconfig is None
        and not any(f.exists() for f in files)
        and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    )
    try:
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            context_namespace = _in_cluster_namespace()
        else:
            if kubeconfig is not None and not Path(kubeconfig).expanduser().exists():
                raise PluginError(f"the kubeconfig {kubeconfig} does not exist")
            if not any(f.exists() for f in files):
                raise PluginError(
                    "no kubeconfig found: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config"
                )
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=config_file,
                context=context,
                client_configuration=configuration,
                persist_config=False,  # never rewrite the user's kubeconfig
            )
            context_namespace = _context_namespace(config_file, context)
    except ConfigException as error:
        raise PluginError(f"cannot use the kubeconfig: {error}") from None
    configuration.retries = CONNECT_RETRIES
    return KubeTarget(
        api=k8s.ApiClient(configuration),
        namespace=namespace or context_namespace or "default",
        timeout=timeout,
    )


def _context_namespace(config_file: str, context: str | None) -> str | None:
    contexts, current = k8s_config.list_kube_config_contexts(config_file)  # type: ignore[no-untyped-call]
    wanted = context or (current or {}).get("name")
    for entry in contexts or []:
        if entry.get("name") == wanted:
            namespace = (entry.get("context") or {}).get("namespace")
            return str(namespace) if namespace else None
    return None


def _in_cluster_namespace() -> str | None:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or None
    except OSError:
        return None


class Resources:
    """CvmPreLaunchScripts and the ConfigMaps and Secrets they name, in one namespace (or all)."""

    def __init__(self, target: KubeTarget) -> None:
        self.namespace = target.namespace
        self._timeout = (min(target.timeout, 10.0), target.timeout)  # (connect, read)
        self._custom = k8s.CustomObjectsApi(target.api)
        self._core = k8s.CoreV1Api(target.api)

    def get(self, name: str) -> Body:
        return cast(
            Body,
            self._call(
                f"cvmprelaunchscript {self.namespace}/{name}",
                self._custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
            ),
        )

    def list(self, *, all_namespaces: bool = False) -> list[Body]:
        if all_namespaces:
            listing = self._call(
                "cvmprelaunchscripts", self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
            )
        else:
            listing = self._call(
                f"cvmprelaunchscripts in namespace {self.namespace}",
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
            )
        items = cast(Mapping[str, Any], listing).get("items") or []
        return [cast(Body, item) for item in items if isinstance(item, dict)]

    def merge_patch(self, name: str, patch: Body) -> Body:
        """A JSON merge patch; one that carries ``metadata.resourceVersion`` is refused with
        :class:`Conflict` when the object changed since that version was read."""
        return cast(
            Body,
            self._call(
                f"cvmprelaunchscript {self.namespace}/{name}",
                self._custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
            ),
        )

    def config_map_value(self, name: str, key: str) -> bytes:
        """A ConfigMap key's bytes (``data`` as UTF-8, or ``binaryData``)."""
        config_map = self._call(
            f"configmap {self.namespace}/{name}", self._core.read_namespaced_config_map, name, self.namespace
        )
        data = getattr(config_map, "data", None) or {}
        binary = getattr(config_map, "binary_data", None) or {}
        if key in data:
            return str(data[key]).encode("utf-8")
        if key in binary:
            try:
                return base64.b64decode(binary[key], validate=True)
            except (binascii.Error, ValueError):
                raise PluginError(
                    f"configmap {self.namespace}/{name}: binaryData[{key}] is not base64"
                ) from None
        raise NotFound(f"configmap {self.namespace}/{name} has no key {key!r}")

    def secret_value(self, name: str, key: str) -> Secret:
        secret = self._call(
            f"secret {self.namespace}/{name}", self._core.read_namespaced_secret, name, self.namespace
        )
        data = getattr(secret, "data", None) or {}
        if key not in data:
            raise NotFound(f"secret {self.namespace}/{name} has no key {key!r}")
        try:
            value = base64.b64decode(data[key], validate=True).decode("utf-8").strip()
        except (binascii.Error, ValueError):
            raise PluginError(
                f"secret {self.namespace}/{name}: the value of {key!r} is not UTF-8 text"
            ) from None
        return Secret(value)

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as error:
            raise _api_error(what, error) from None
        except urllib3.exceptions.HTTPError as error:
            # The text of a transport error can quote the URL; its kind is enough to act on.
            raise PluginError(f"cannot reach the Kubernetes API server ({type(error).__name__})") from None


def _api_error(what: str, error: ApiException) -> PluginError:
    status = error.status
    message = ""
    try:
        document = json.loads(error.body or "")
        if isinstance(document, dict):
            message = str(document.get("message") or "")
    except (TypeError, ValueError):
        pass
    message = message or str(error.reason or "")
    if status == 404:
        if "the server could not find the requested resource" in message:
            return NotFound(
                "the API server does not know cvmprelaunchscripts.cloud.phala.com: is the CRD installed?"
            )
        return NotFound(f"{what} not found")
    if status == 409:
        return Conflict(f"{what} changed while it was being updated: {message}")
    return PluginError(f"{what}: HTTP {status}: {message}")
