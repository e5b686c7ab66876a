"""The simulator's compose hash is byte-exact with Phala's JS SDK (``@phala/cloud``), which runs
here in a node process on the same inputs, including JavaScript's corners: number formatting,
integer-like keys enumerated first, the global ``": "`` replace inside strings, escapes."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.simulator import compose_hash, serialise_app_compose

_NODE_SCRIPT = """
const sdk = require(process.argv[1]);
const crypto = require('crypto');
const rl = require('readline').createInterface({input: process.stdin});
rl.on('line', (line) => {
  const obj = JSON.parse(line);
  // What js/src/utils/get_compose_hash.ts does. (The package's top-level getComposeHash export is
  // dstack-sdk's compact-JSON variant, which is not what Phala's server hashes.)
  const text = sdk.dumpAppCompose(sdk.preprocessAppCompose(obj));
  const hash = crypto.createHash('sha256').update(text, 'utf8').digest('hex');
  process.stdout.write(JSON.stringify({text, hash}) + '\\n');
});
"""


class JsSdk:
    def __init__(self) -> None:
        sdk = paths.node_modules() / "@phala" / "cloud"
        node = shutil.which("node")
        if node is None or not sdk.is_dir():
            pytest.skip("node or @phala/cloud is not installed")
        self._process = subprocess.Popen(
            [node, "-e", _NODE_SCRIPT, str(sdk)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="surrogatepass",
        )

    def dump(self, app_compose: dict[str, Any]) -> tuple[str, str]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(app_compose) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline())
        return answer["text"], answer["hash"]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=10)


@pytest.fixture(scope="module")
def js_sdk() -> Iterator[JsSdk]:
    sdk = JsSdk()
    yield sdk
    sdk.close()


# Characters where JS and Python JSON differ, plus pieces with ": " for the SDK's global replace.
_CHARS = ["a", "b", ":", '"', " ", "\\", "\n", "\t", "\x01", "\x7f", "é", "€", "😀", "\u2028", "\ud800"]
_text = st.lists(st.sampled_from([*_CHARS, ": ", '": ']), max_size=8).map("".join)
_key = st.one_of(
    _text, st.integers(0, 20).map(str), st.sampled_from(["runner", "pre_launch_script", "01", "-1"])
)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_json = st.recursive(
    _scalar,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(_key, children, max_size=4)),
    max_leaves=12,
)
_app_compose = st.fixed_dictionaries(
    {},
    optional={
        "runner": st.sampled_from(["docker-compose", "bash", "other"]),
        "docker_compose_file": _text,
        "bash_script": _text,
        "pre_launch_script": st.one_of(st.just(""), st.none(), _text),
    },
).flatmap(lambda base: st.dictionaries(_key, _json, max_size=5).map(lambda extra: {**extra, **base}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_app_compose)
def test_byte_exact_with_the_js_sdk(js_sdk: JsSdk, app_compose: dict[str, Any]) -> None:
    text, js_hash = js_sdk.dump(app_compose)
    assert serialise_app_compose(app_compose) == text
    assert compose_hash(app_compose) == js_hash


def test_a_realistic_app_compose(js_sdk: JsSdk) -> None:
    app_compose = {
        "manifest_version": 2,
        "name": "my-app",
        "runner": "docker-compose",
        "docker_compose_file": "services:\n  app:\n    image: nginx\n    environment:\n      A: b\n",
        "bash_script": "dropped because the runner is docker-compose",
        "pre_launch_script": '#!/bin/sh\necho "key": value\n',
        "features": ["kms", "tproxy-net"],
        "allowed_envs": [],
        "kms_enabled": True,
        "memory": 4096.0,
        "ratio": 1e-7,
    }
    text, js_hash = js_sdk.dump(app_compose)
    assert serialise_app_compose(app_compose) == text
    assert compose_hash(app_compose) == js_hash
    assert '"bash_script"' not in text and '"memory":4096,' in text
