"""Phala's app-compose serialisation, reproduced the way the official JS SDK does it.

``js/src/utils/get_compose_hash.ts``: drop ``pre_launch_script`` when it is empty, drop
``docker_compose_file`` when ``runner == "bash"`` and ``bash_script`` when
``runner == "docker-compose"``; sort keys recursively; ``JSON.stringify(obj, null, 4)``; replace
every ``": "`` with ``":"``; sha256 of the UTF-8 bytes.

This module is the simulator's own copy (it plays the server): it deliberately does not share code
with the operator, so one bug cannot hide on both sides. It follows JavaScript exactly where
Python's ``json`` differs: number formatting, the order of integer-like keys, string escapes.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

_INDENT = " " * 4
# Array-index keys: JS objects enumerate them first, in numeric order, whatever the insertion order.
_MAX_ARRAY_INDEX = 2**32 - 2


def normalise_app_compose(app_compose: dict[str, Any]) -> dict[str, Any]:
    """The field drops the SDK applies before serialising (a shallow copy, like ``{...e}``)."""
    result = dict(app_compose)
    runner = result.get("runner")
    if runner == "bash":
        result.pop("docker_compose_file", None)
    elif runner == "docker-compose":
        result.pop("bash_script", None)
    # JS drops the key when the value is falsy: "", null, false, 0.
    if "pre_launch_script" in result and not _js_truthy(result["pre_launch_script"]):
        del result["pre_launch_script"]
    return result


def serialise_app_compose(app_compose: dict[str, Any]) -> str:
    """The exact app-compose.json text whose sha256 is the compose hash."""
    text = _stringify(_sorted_keys(normalise_app_compose(app_compose)), "")
    # The SDK's global regex replace: it rewrites ": " inside string values as well.
    return text.replace('": ', '":')


def compose_hash_of_text(app_compose_text: str) -> str:
    """sha256 of the app-compose text, 64 lowercase hex digits without ``0x``."""
    return hashlib.sha256(app_compose_text.encode("utf-8", "surrogatepass")).hexdigest()


def compose_hash(app_compose: dict[str, Any]) -> str:
    return compose_hash_of_text(serialise_app_compose(app_compose))


def _js_truthy(value: Any) -> bool:
    if value is None or value is False or value == "":
        return False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    return True


def _is_array_index(key: str) -> bool:
    if not key.isdigit() or not key.isascii():
        return False
    if key != "0" and key.startswith("0"):
        return False
    return int(key) <= _MAX_ARRAY_INDEX


def _utf16_key(key: str) -> bytes:
    # Array.prototype.sort() without a comparator compares UTF-16 code units.
    return key.encode("utf-16-be", "surrogatepass")


def _ordered_keys(obj: dict[str, Any]) -> list[str]:
    keys = sorted(obj, key=_utf16_key)
    indices = sorted((k for k in keys if _is_array_index(k)), key=int)
    return indices + [k for k in keys if not _is_array_index(k)]


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in _ordered_keys(value)}
    return value


def _stringify(value: Any, indent: str) -> str:
    if value is None or value is True or value is False:
        return json.dumps(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    inner = indent + _INDENT
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [_stringify(item, inner) for item in value]
        return "[\n" + ",\n".join(inner + item for item in items) + "\n" + indent + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        # Key order was fixed by _sorted_keys; keep it (dicts preserve insertion order).
        members = [f"{inner}{_quote(str(k))}: {_stringify(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(members) + "\n" + indent + "}"
    raise TypeError(f"cannot serialise {type(value).__name__} in an app-compose")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _quote(text: str) -> str:
    """JSON.stringify's string quoting (well-formed variant, Node 12+)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:
            # Control characters and lone surrogates: lowercase \u escapes, like V8.
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _js_number(value: float) -> str:
    """Number.prototype.toString for a double (what JSON.stringify prints)."""
    if math.isnan(value) or math.isinf(value):
        return "null"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest round-tripping digits, the same digits ECMAScript picks.
    mantissa, _, exponent_text = repr(abs(value)).partition("e")
    exponent = int(exponent_text) if exponent_text else 0
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    # n: position of the decimal point relative to the digit string (ECMAScript's n).
    point = len(whole) + exponent if whole != "0" else exponent - (len(fraction) - len(fraction.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        text = digits + "0" * (point - k)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * (-point) + digits
    else:
        exp = point - 1
        exp_text = f"+{exp}" if exp >= 0 else str(exp)
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + exp_text
    return sign + text
