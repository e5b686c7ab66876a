"""Walk the spec's documented paths the simulator serves: every response body it produces there
validates against the response schema of Phala's OpenAPI document, where the spec defines one."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from simtest_helpers import SendTx, api_client, hash_bytes

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.simulator import API_PREFIX, SimulatorServer
from cvm_prelaunch_localenv.simulator.responses import KNOWN_VERSIONS

SPEC_URI = "urn:phala-cloud-openapi"
SCRIPT = "#!/bin/sh\necho schema walk\n"


def spec_path() -> Path:
    for candidate in (
        paths.repo_root().parent / "shared" / "phala-cloud-openapi.json",
        Path("/work/shared/phala-cloud-openapi.json"),
    ):
        if candidate.is_file():
            return candidate
    pytest.skip("Phala's OpenAPI document is not available")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(spec_path().read_text())
    return loaded


def _absolute_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                SPEC_URI + v
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _absolute_refs(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(item) for item in node]
    return node


def response_schema(spec: dict[str, Any], template: str, method: str, status: int) -> dict[str, Any] | None:
    """The JSON schema the spec gives for that response, or None when it documents no body."""
    operation = spec["paths"][API_PREFIX + template][method.lower()]
    response = operation["responses"].get(str(status))
    if response is None:
        return None
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    # ``{}`` documents "any JSON": still checked (the body must parse).
    return None if schema is None else dict(_absolute_refs(schema))


class Walker:
    """Collects (template, method, status, body) of real responses and validates each."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
        )
        self.registry = registry
        self.validated: set[tuple[str, str, int]] = set()
        self.undocumented: set[tuple[str, str, int]] = set()

    def check(self, response: httpx.Response, template: str) -> httpx.Response:
        method = response.request.method
        schema = response_schema(self.spec, template, method, response.status_code)
        key = (template, method, response.status_code)
        if schema is None:
            self.undocumented.add(key)
            return response
        self.validate(response.json(), template, method, response.status_code)
        return response

    def validate(self, body: Any, template: str, method: str, status: int) -> None:
        schema = response_schema(self.spec, template, method, status)
        assert schema is not None
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        assert error is None, f"{method} {template} {status}: {list(error.path)}: {error.message[:300]}"
        self.validated.add((template, method, status))


@pytest.fixture
def walker(spec: dict[str, Any]) -> Walker:
    return Walker(spec)


@pytest.fixture
def clients(sim: SimulatorServer) -> Iterator[list[httpx.Client]]:
    opened: list[httpx.Client] = []
    yield opened
    for client in opened:
        client.close()


SERVED = [
    ("/cvms/{cvm_id}", "GET"),
    ("/cvms/{cvm_id}", "PATCH"),
    ("/cvms/{cvm_id}/pre-launch-script", "GET"),
    ("/cvms/{cvm_id}/pre-launch-script", "PATCH"),
    ("/cvms/{cvm_id}/attestation", "GET"),
    ("/cvms/{cvm_id}/compose_file", "GET"),
    ("/cvms/{cvm_id}/operations", "GET"),
    ("/cvms/{cvm_id}/operation-status", "GET"),
]


def check_detail(walker: Walker, client: httpx.Client, version: str, target: SimTarget) -> dict[str, Any]:
    response = client.get(f"/cvms/{target.id}")
    body: dict[str, Any] = response.json()
    if version == "2026-01-21":
        # The spec documents today's shapes: the legacy one (2025-10-28) and the hashid one
        # (2026-05-22 on). In between, the id was the VM UUID, which the spec's id pattern no
        # longer admits; the rest of the body must still match.
        assert response.status_code == 200 and body["id"] == target.cvm.vm_uuid
        walker.validate(body | {"id": target.cvm.id}, "/cvms/{cvm_id}", "GET", 200)
        return body
    walker.check(response, "/cvms/{cvm_id}")
    return body


def test_served_paths_are_the_specs(spec: dict[str, Any]) -> None:
    for template, method in SERVED:
        assert method.lower() in spec["paths"][API_PREFIX + template], (template, method)


def test_every_response_validates_against_the_spec(
    sim: SimulatorServer,
    sim_cvm_factory: SimCvmFactory,
    walker: Walker,
    clients: list[httpx.Client],
    send_tx: SendTx,
) -> None:
    onchain = sim_cvm_factory(onchain=True, pre_launch_script="#!/bin/sh\necho v1\n")
    offchain = sim_cvm_factory(onchain=False)
    stranger = api_client(sim.base_url, "phak_unknown")
    clients.append(stranger)
    by_version = {}
    for version in KNOWN_VERSIONS:
        client = api_client(sim.base_url, onchain.api_key, version)
        clients.append(client)
        by_version[version] = client
    client = by_version[KNOWN_VERSIONS[-1]]
    off_client = api_client(sim.base_url, offchain.api_key)
    clients.append(off_client)

    # Reads, in every response shape the version header selects, for both kinds of CVM.
    for target, reader in ((onchain, by_version), (offchain, None)):
        for version in KNOWN_VERSIONS:
            c = reader[version] if reader else api_client(sim.base_url, target.api_key, version)
            if not reader:
                clients.append(c)
            body = check_detail(walker, c, version, target)
            if version == "2025-10-28":
                assert isinstance(body["id"], int)
            elif version >= "2026-05-22":
                assert re.fullmatch(r"cvm_[A-Za-z0-9]{8}", body["id"])
    for template in (
        "/pre-launch-script",
        "/attestation",
        "/compose_file",
        "/operations",
        "/operation-status",
    ):
        walker.check(client.get(f"/cvms/{onchain.id}{template}"), "/cvms/{cvm_id}" + template)
    walker.check(
        client.get(f"/cvms/{onchain.id}/operations", params={"limit": 0}), "/cvms/{cvm_id}/operations"
    )
    walker.check(client.patch(f"/cvms/{onchain.id}", json={"vcpu": "x"}), "/cvms/{cvm_id}")

    # Errors on every served path.
    for template, method in SERVED:
        path = template.replace("{cvm_id}", onchain.id)
        walker.check(
            stranger.request(method, path, content=b"x", headers={"Content-Type": "text/plain"}), template
        )
        missing = template.replace("{cvm_id}", "cvm_missing1")
        walker.check(
            client.request(method, missing, content=b"x", headers={"Content-Type": "text/plain"}), template
        )
        walker.check(
            off_client.request(method, path, content=b"x", headers={"Content-Type": "text/plain"}), template
        )

    walker.check(
        client.patch(
            f"/cvms/{onchain.id}/pre-launch-script", content=b"", headers={"Content-Type": "text/plain"}
        ),
        "/cvms/{cvm_id}/pre-launch-script",
    )

    # The on-chain flow on the dedicated endpoint, with operations and their status in between.
    phase1 = walker.check(
        client.patch(
            f"/cvms/{onchain.id}/pre-launch-script",
            content=SCRIPT.encode(),
            headers={"Content-Type": "text/plain"},
        ),
        "/cvms/{cvm_id}/pre-launch-script",
    )
    announced = {d["field"]: d["value"] for d in phase1.json()["details"]}["compose_hash"]
    tx = send_tx(onchain.contract, "addComposeHash", hash_bytes(announced))
    walker.check(
        client.patch(
            f"/cvms/{onchain.id}/pre-launch-script",
            content=SCRIPT.encode(),
            headers={"Content-Type": "text/plain", "X-Compose-Hash": announced, "X-Transaction-Hash": tx},
        ),
        "/cvms/{cvm_id}/pre-launch-script",
    )
    for template in ("", "/operations", "/operation-status", "/attestation"):
        walker.check(client.get(f"/cvms/{onchain.id}{template}"), "/cvms/{cvm_id}" + template)
    for version, c in by_version.items():
        assert check_detail(walker, c, version, onchain)["in_progress"] is True, version

    # The off-chain update on the unified endpoint.
    walker.check(
        off_client.patch(f"/cvms/{offchain.id}", json={"pre_launch_script": SCRIPT}), "/cvms/{cvm_id}"
    )
    walker.check(off_client.get(f"/cvms/{offchain.id}/operations"), "/cvms/{cvm_id}/operations")

    # Each served operation had its success body checked against the spec.
    for template, method in SERVED:
        statuses = {s for t, m, s in walker.validated if (t, m) == (template, method)}
        assert statuses & {200, 202}, (template, method, statuses)
    assert ("/cvms/{cvm_id}/operations", "GET", 422) in walker.validated
    assert ("/cvms/{cvm_id}", "PATCH", 422) in walker.validated
    # Statuses the spec lists without a body schema (401, 403, 404, 400, 465...) were produced too.
    assert {s for _t, _m, s in walker.undocumented} >= {400, 401, 403, 404, 465}
