"""The compose hash of an app-compose, computed the way Phala does, and verification of a claimed one.

A CVM measures ``sha256`` over the raw bytes of its ``app-compose.json``; ``pre_launch_script`` is a
field of that file. Before the operator signs a hash a server handed it (the 465 of Phase 1), it
rebuilds the app-compose the CVM will run (the current one with the new script) and checks that the
claimed hash is the hash of that text. A hash the operator cannot reproduce is never signed.

Serialisation. Phala's JS SDK (``getComposeHash``) drops an empty ``pre_launch_script``, drops
``docker_compose_file`` when ``runner == "bash"`` and ``bash_script`` when
``runner == "docker-compose"``, sorts keys recursively, runs ``JSON.stringify(obj, null, 4)`` and
then replaces every ``": "`` by ``":"``. The Python equivalent is ``json.dumps(obj, sort_keys=True,
indent=4, separators=(",", ":"))``. The two agree on ordinary content and differ in corners:

* a string that itself contains ``": "`` (the JS replace rewrites it inside the string too);
* non-ASCII text, which Python escapes unless ``ensure_ascii=False``;
* numbers (``1.0`` is ``1`` in JS), key order (JS sorts UTF-16 code units and lists array-index
  keys such as ``"10"`` first, in numeric order) and lone surrogates.

Which variant Phala's server uses in those corners is not published. So :func:`verify_compose_hash`
accepts a claimed hash equal to any of three faithful serialisations (:data:`VARIANTS`) and reports
which one matched. Each is a deterministic encoding of exactly the app-compose the operator asked
for (current app-compose, new script), so accepting any of them signs nothing else; the one nuance
is the ``js`` variant, whose global replace also turns ``": "`` into ``":"`` inside the script text,
exactly as Phala's own SDK computes it.

Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

Variant = Literal["js", "python", "python-ascii"]

VARIANTS: tuple[Variant, ...] = ("js", "python", "python-ascii")
"""Serialisations accepted for a claimed hash, in order of preference.

``js``: Phala's JS SDK byte for byte (``JSON.stringify`` semantics, global ``": "`` replace).
``python``: ``json.dumps(sort_keys=True, indent=4, separators=(",", ":"), ensure_ascii=False)``.
``python-ascii``: the same with ``ensure_ascii=True`` (non-ASCII as ``\\uXXXX``).
"""

Outcome = Literal["match", "mismatch", "cannot_verify"]

MAX_JSON_DEPTH = 64
"""Nesting beyond this is refused before parsing. Python's C JSON decoder recurses on the C stack,
and a process that imported web3 runs with a recursion limit of 100000 (``py_ecc`` raises it), so
``json.loads("[" * 100_000)`` there is a segmentation fault, not a ``RecursionError``."""

_HEX64 = re.compile(r"^(?:0x)?([0-9a-fA-F]{64})$")
_JSON_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_ARRAY_INDEX = re.compile(r"^(?:0|[1-9][0-9]*)$")
_MAX_ARRAY_INDEX = 2**32 - 2  # ECMAScript: an array index is an integer below 2**32 - 1
_MAX_SAFE_INTEGER = 2**53
_INDENT = " " * 4


class AppComposeError(ValueError):
    """An app-compose that cannot be read or serialised (not a JSON object, a value JSON lacks)."""


@dataclass(frozen=True)
class Verification:
    """Whether a claimed compose hash is the hash of the app-compose the operator expects.

    ``expected`` is the operator's own hash (``0x`` + 64 lower-case hex): the matching variant's on
    a match, the ``js`` variant's otherwise (None when nothing could be computed). ``claimed`` is
    the server's string exactly as given. ``candidates`` holds every variant's hash.
    """

    outcome: Outcome
    expected: str | None
    claimed: str | None
    detail: str
    variant: Variant | None = None
    candidates: Mapping[Variant, str] = field(default_factory=dict)

    @property
    def matched(self) -> bool:
        return self.outcome == "match"


def normalize_hash(value: str | None) -> str | None:
    """``0x`` + 64 lower-case hex, or None when ``value`` is not a 32-byte hex string."""
    if value is None:
        return None
    found = _HEX64.fullmatch(value.strip())
    return "0x" + found.group(1).lower() if found else None


def load_json_bounded(text: str, *, max_depth: int = MAX_JSON_DEPTH) -> object:
    """``json.loads`` for text from elsewhere: refuses ``NaN``/``Infinity`` and nesting deeper than
    ``max_depth`` (raising ``ValueError``) instead of risking the C stack."""
    if text.count("[") + text.count("{") > max_depth:
        depth = 0
        for token in _JSON_STRING_OR_BRACKET.finditer(text):
            bracket = token.group()
            if bracket in ("[", "{"):
                depth += 1
                if depth > max_depth:
                    raise ValueError(f"JSON nested deeper than {max_depth} levels")
            elif bracket in ("]", "}"):
                depth -= 1
    return json.loads(text, parse_constant=_reject_constant)


def parse_app_compose(app_compose_text: str) -> dict[str, object]:
    """Parse an app-compose text strictly: a JSON object, no ``NaN``/``Infinity`` extensions."""
    try:
        parsed = load_json_bounded(app_compose_text)
    except (ValueError, RecursionError) as exc:
        raise AppComposeError(f"app-compose is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise AppComposeError(f"app-compose is a JSON {type(parsed).__name__}, not an object")
    return parsed


def app_compose_with_script(app_compose_text: str, script: str | bytes) -> dict[str, object]:
    """The current app-compose with ``pre_launch_script`` replaced by ``script`` (UTF-8 if bytes)."""
    app_compose = parse_app_compose(app_compose_text)
    if isinstance(script, bytes):
        try:
            script = script.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AppComposeError(
                f"the script is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    app_compose["pre_launch_script"] = script
    return app_compose


def preprocess_app_compose(app_compose: Mapping[str, object]) -> dict[str, object]:
    """Drop what Phala leaves out of the hashed text (a shallow copy; the input is not changed)."""
    prepared = dict(app_compose)
    runner = prepared.get("runner")
    if runner == "bash":
        prepared.pop("docker_compose_file", None)
    elif runner == "docker-compose":
        prepared.pop("bash_script", None)
    if "pre_launch_script" in prepared and not _js_truthy(prepared["pre_launch_script"]):
        del prepared["pre_launch_script"]
    return prepared


def serialize_app_compose(app_compose: Mapping[str, object], variant: Variant = "js") -> str:
    """The exact text whose sha256 is the compose hash, in one of :data:`VARIANTS`."""
    prepared = preprocess_app_compose(app_compose)
    if variant == "js":
        return _js_stringify(prepared, 0).replace('": ', '":')
    try:
        return json.dumps(
            prepared,
            sort_keys=True,
            indent=4,
            separators=(",", ":"),
            ensure_ascii=variant == "python-ascii",
            allow_nan=False,
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise AppComposeError(f"app-compose cannot be serialised as JSON: {exc}") from None


def compose_hash(app_compose: Mapping[str, object], variant: Variant = "js") -> str:
    """sha256 hex (64 lower-case digits, no ``0x``) of the serialised app-compose, as Phala's SDK."""
    text = serialize_app_compose(app_compose, variant)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise AppComposeError("app-compose holds a lone surrogate that UTF-8 cannot encode") from None
    return hashlib.sha256(data).hexdigest()


def compose_hash_variants(app_compose: Mapping[str, object]) -> dict[Variant, str]:
    """The hash under every variant that can serialise this app-compose (``0x`` + 64 hex)."""
    hashes: dict[Variant, str] = {}
    for variant in VARIANTS:
        try:
            hashes[variant] = "0x" + compose_hash(app_compose, variant)
        except AppComposeError:
            # A variant that cannot encode the value (Python and a lone surrogate) cannot be the
            # serialisation the server used either.
            continue
    return hashes


def verify_compose_hash(
    current_app_compose_text: str,
    current_compose_hash: str | None,
    new_script: str | bytes,
    claimed_hash: str | None,
) -> Verification:
    """Check a server's claimed compose hash for ``new_script`` against the CVM's current app-compose.

    The current text must first hash to the CVM's ``compose_hash`` (else it is not what the CVM
    runs, and nothing can be verified). Then the claimed hash must equal the hash of the current
    app-compose with ``pre_launch_script`` set to ``new_script`` under one of :data:`VARIANTS`.
    """
    current = normalize_hash(current_compose_hash)
    if current is None:
        why = (
            "the CVM reports no compose hash" if not current_compose_hash else "its compose hash is malformed"
        )
        return Verification("cannot_verify", None, claimed_hash, f"cannot verify: {why}")
    try:
        current_bytes = current_app_compose_text.encode("utf-8")
    except UnicodeEncodeError:
        return Verification(
            "cannot_verify",
            None,
            claimed_hash,
            "cannot verify: the app-compose text is not encodable as UTF-8",
        )
    actual = "0x" + hashlib.sha256(current_bytes).hexdigest()
    if actual != current:
        return Verification(
            "cannot_verify",
            None,
            claimed_hash,
            f"cannot verify: the app-compose text hashes to {actual}, not to the CVM's compose hash "
            f"{current}, so it is not what the CVM runs",
        )
    try:
        expected_compose = app_compose_with_script(current_app_compose_text, new_script)
    except AppComposeError as exc:
        return Verification("cannot_verify", None, claimed_hash, f"cannot verify: {exc}")
    candidates = compose_hash_variants(expected_compose)
    if not candidates:
        return Verification(
            "cannot_verify", None, claimed_hash, "cannot verify: the new app-compose cannot be serialised"
        )
    primary = candidates.get("js") or next(iter(candidates.values()))
    claimed = normalize_hash(claimed_hash)
    if claimed is None:
        return Verification(
            "mismatch",
            primary,
            claimed_hash,
            "the claimed compose hash is not a 32-byte hex value",
            candidates=candidates,
        )
    reproduced = _variants_reproducing(current_app_compose_text)
    for variant, candidate in candidates.items():
        if candidate == claimed:
            agreeing = [v for v, h in candidates.items() if h == claimed]
            return Verification(
                "match",
                candidate,
                claimed_hash,
                f"the claimed compose hash is the {'/'.join(agreeing)} serialisation of the current "
                f"app-compose with the new script; {_describe_reproduced(reproduced)}",
                variant=variant,
                candidates=candidates,
            )
    listed = ", ".join(f"{v} {h}" for v, h in candidates.items())
    return Verification(
        "mismatch",
        primary,
        claimed_hash,
        f"the claimed compose hash {claimed} is not the hash of the current app-compose with the new "
        f"script (computed: {listed}); {_describe_reproduced(reproduced)}",
        candidates=candidates,
    )


def _variants_reproducing(app_compose_text: str) -> list[Variant]:
    """The variants whose serialisation of the parsed text is the text itself (a diagnostic)."""
    try:
        parsed = parse_app_compose(app_compose_text)
    except AppComposeError:
        return []
    found: list[Variant] = []
    for variant in VARIANTS:
        try:
            if serialize_app_compose(parsed, variant) == app_compose_text:
                found.append(variant)
        except AppComposeError:
            continue
    return found


def _describe_reproduced(variants: Sequence[Variant]) -> str:
    if not variants:
        return "no variant reproduces the current app-compose text byte for byte"
    return f"the current app-compose text is byte-identical to its {'/'.join(variants)} serialisation"


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _js_truthy(value: object) -> bool:
    """JavaScript truthiness of a JSON value (``!value`` in the SDK): ``[]`` and ``{}`` are truthy."""
    if value is None or value is False:
        return False
    if isinstance(value, str):
        return value != ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    return True


# --- JSON.stringify(value, null, 4), reimplemented with ECMAScript semantics -----------------------


def _js_stringify(value: object, depth: int) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _js_quote(value)
    if isinstance(value, int):
        return _js_number_from_int(value)
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, Mapping):
        keys = [_require_str_key(key) for key in value]
        if not keys:
            return "{}"
        inner = _INDENT * (depth + 1)
        members = [
            f"{inner}{_js_quote(key)}: {_js_stringify(value[key], depth + 1)}" for key in _js_key_order(keys)
        ]
        return "{\n" + ",\n".join(members) + "\n" + _INDENT * depth + "}"
    if isinstance(value, list | tuple):
        if not value:
            return "[]"
        inner = _INDENT * (depth + 1)
        items = [f"{inner}{_js_stringify(item, depth + 1)}" for item in value]
        return "[\n" + ",\n".join(items) + "\n" + _INDENT * depth + "]"
    raise AppComposeError(f"app-compose holds a {type(value).__name__}, which JSON cannot represent")


def _require_str_key(key: object) -> str:
    if not isinstance(key, str):
        raise AppComposeError(f"app-compose has a non-string key of type {type(key).__name__}")
    return key


def _js_key_order(keys: list[str]) -> list[str]:
    """``Object.keys(obj).sort()`` rebuilt into an object, then enumerated as JSON.stringify does.

    ``sort()`` compares UTF-16 code units (UTF-16-BE bytes compare the same way); an ordinary object
    then lists its array-index keys first, in ascending numeric order, whatever their insertion order.
    """
    by_code_units = sorted(keys, key=lambda key: key.encode("utf-16-be", "surrogatepass"))
    indices = [key for key in by_code_units if _is_array_index(key)]
    others = [key for key in by_code_units if not _is_array_index(key)]
    return sorted(indices, key=int) + others


def _is_array_index(key: str) -> bool:
    return bool(_ARRAY_INDEX.fullmatch(key)) and int(key) <= _MAX_ARRAY_INDEX


_JS_ESCAPES = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
    '"': '\\"',
    "\\": "\\\\",
}


# A surrogate pair (one character to JS), else one character JSON.stringify escapes.
_JS_NEEDS_ESCAPE = re.compile(r'[\ud800-\udbff][\udc00-\udfff]|[\x00-\x1f"\\\ud800-\udfff]')


def _js_quote(text: str) -> str:
    """ECMAScript QuoteJSONString: escapes only quote, backslash, C0 controls and lone surrogates."""
    return '"' + _JS_NEEDS_ESCAPE.sub(_js_escape, text) + '"'


def _js_escape(found: re.Match[str]) -> str:
    text = found.group()
    if len(text) == 2:
        # Two code points that JS sees as one well-formed surrogate pair: one character, unescaped.
        return chr(0x10000 + (ord(text[0]) - 0xD800) * 0x400 + (ord(text[1]) - 0xDC00))
    return _JS_ESCAPES.get(text) or f"\\u{ord(text):04x}"


def _js_number_from_int(value: int) -> str:
    if abs(value) <= _MAX_SAFE_INTEGER:
        return str(value)
    # JSON.parse reads a large integer as the nearest double.
    try:
        return _js_number(float(value))
    except OverflowError:
        return "null"


def _js_number(value: float) -> str:
    """ECMAScript Number::toString (radix 10) for a double, as JSON.stringify prints it."""
    if not math.isfinite(value):
        return "null"  # JSON.stringify writes NaN and the infinities as null
    if value == 0:
        return "0"  # also for -0
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires; only the layout differs.
    parts = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in parts.digits)
    exponent = parts.exponent
    assert isinstance(exponent, int)
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exp = n - 1
    exp_text = f"e+{exp}" if exp >= 0 else f"e-{-exp}"
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + mantissa + exp_text
