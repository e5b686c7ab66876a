"""Fault injection and tunables of the simulator, set through the admin API.

A rule matches requests by method, path (a regular expression searched in the path below
``/api/v1``) and CVM, and applies ``count`` times (``None``: until cleared). HTTP rules add latency
and/or answer a status (bare or structured body, ``Retry-After``) or drop the connection. Two kinds
act on the flow instead of the request: ``fail_operation`` makes the next operation fail with a
message, ``wrong_compose_hash`` makes the next 465 carry a hash that is not the real one.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

FORMS_465 = ("structured", "flat", "nested")
PRELAUNCH_GET_FORMS = ("json", "text")


class FaultError(ValueError):
    """An admin request with a rule or a setting the simulator cannot apply."""


@dataclass
class FaultRule:
    id: int
    method: str | None = None
    path: str | None = None
    cvm: str | None = None
    count: int | None = 1
    latency_ms: int = 0
    status: int | None = None
    retry_after: str | None = None
    error_code: str | None = None
    message: str | None = None
    drop: bool = False
    fail_operation: str | None = None
    wrong_compose_hash: bool = False
    hits: int = 0

    @property
    def kind(self) -> str:
        if self.fail_operation is not None:
            return "fail_operation"
        if self.wrong_compose_hash:
            return "wrong_compose_hash"
        return "http"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["kind"] = self.kind
        return data


@dataclass
class Settings:
    operation_seconds: float = 0.5
    phase1_ttl_seconds: float = 14 * 24 * 3600.0
    receipt_retry_seconds: float = 2.0
    form_465: str = "structured"
    hash_0x: bool = True
    prelaunch_get: str = "json"
    rpc_urls: dict[int, str] = field(default_factory=dict)

    def update(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            if key == "rpc_urls":
                if not isinstance(value, dict):
                    raise FaultError("rpc_urls must map chain ids to URLs")
                self.rpc_urls.update({int(k): str(v) for k, v in value.items()})
            elif key in ("operation_seconds", "phase1_ttl_seconds", "receipt_retry_seconds"):
                number = float(value)
                if number < 0:
                    raise FaultError(f"{key} must not be negative")
                setattr(self, key, number)
            elif key == "form_465":
                if value not in FORMS_465:
                    raise FaultError(f"form_465 must be one of {', '.join(FORMS_465)}")
                self.form_465 = value
            elif key == "hash_0x":
                self.hash_0x = bool(value)
            elif key == "prelaunch_get":
                if value not in PRELAUNCH_GET_FORMS:
                    raise FaultError(f"prelaunch_get must be one of {', '.join(PRELAUNCH_GET_FORMS)}")
                self.prelaunch_get = value
            else:
                raise FaultError(f"unknown setting {key!r}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # RPC URLs may carry provider keys: the admin API shows only which chains are configured.
        data["rpc_urls"] = sorted(self.rpc_urls)
        return data


_RULE_FIELDS = {f.name for f in dataclasses.fields(FaultRule)} - {"id", "hits"}


class FaultBook:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)

    def add(self, spec: dict[str, Any]) -> FaultRule:
        unknown = set(spec) - _RULE_FIELDS
        if unknown:
            raise FaultError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        try:
            rule = FaultRule(id=next(self._ids), **spec)
        except TypeError as exc:
            raise FaultError(str(exc)) from None
        if rule.path is not None:
            try:
                re.compile(rule.path)
            except re.error as exc:
                raise FaultError(f"path is not a regular expression: {exc}") from None
        if rule.status is not None and not 100 <= int(rule.status) <= 599:
            raise FaultError("status must be an HTTP status code")
        if rule.count is not None and rule.count < 1:
            raise FaultError("count must be at least 1, or null for unlimited")
        if rule.kind == "http" and not (rule.latency_ms or rule.status or rule.drop):
            raise FaultError("an HTTP fault needs latency_ms, status or drop")
        self._rules.append(rule)
        return rule

    def clear(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def take(self, kind: str, method: str, path: str, cvm_matches: Any) -> FaultRule | None:
        """The first live rule of ``kind`` matching the request; one use of it is consumed.

        ``cvm_matches(identifier) -> bool`` says whether a rule's CVM is the request's CVM.
        """
        for rule in self._rules:
            if rule.kind != kind:
                continue
            if rule.method is not None and rule.method.upper() != method.upper():
                continue
            if rule.path is not None and not re.search(rule.path, path):
                continue
            if rule.cvm is not None and not cvm_matches(rule.cvm):
                continue
            rule.hits += 1
            if rule.count is not None:
                rule.count -= 1
                if rule.count == 0:
                    self._rules.remove(rule)
            return rule
        return None
