"""Runs Argo CD resource-customization Lua the way Argo CD does, on a real Lua 5.1 (lupa).

What it reproduces of Argo CD's ``util/lua`` (gopher-lua, a Lua 5.1):

- The object is the global ``obj``; the script's return value is the result.
- Without ``useOpenLibs`` a script gets only the base functions, ``require``, ``table`` and a
  "safe" ``os`` with ``time`` and ``date``; no ``string`` (not even string methods), ``math``,
  ``io`` or ``debug``. With it, the full standard library plus that same ``os.time``/``os.date``.
- A script runs under a budget (Argo CD: a one-second context; here: an instruction count).
- Health: the result must be a table with a ``status`` among Argo CD's codes, otherwise it becomes
  ``Unknown`` with Argo CD's message. Discovery: a map of action name to ``{}`` (enabled) or a table
  with ``disabled``. Action: an object (a patch of the input) or, new style, a list of
  ``{resource, operation}``. Lua cannot tell an empty map from an empty list; like Argo CD, an empty
  table where the input had a map is given back as a map.

The clock is frozen (``now``, seconds since the epoch) so that actions writing timestamps give exact
results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lupa import lua51

HEALTH_CODES = frozenset({"Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing"})
INVALID_HEALTH_STATUS = "Lua returned an invalid health status"
# 2026-01-01T00:00:00Z: the instant the test data's timestamps assume.
FROZEN_NOW = 1_767_225_600
# Far more than any of our scripts needs, far less than an endless loop would use.
INSTRUCTION_BUDGET = 5_000_000

# Builds the environment a script sees and runs it there. Everything the sandbox must not expose
# (debug, the real os, string's metatable) is captured as an upvalue here, never put in the env.
_RUNNER = r"""
local real_os, real_debug, real_string = os, debug, string
local real_table, real_G = table, _G
local base_names = {
  "assert", "collectgarbage", "error", "getfenv", "getmetatable", "ipairs", "load", "loadstring",
  "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawset", "select", "setfenv",
  "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall", "_VERSION", "newproxy",
}

local function copy(source)
  local target = {}
  for key, value in pairs(source) do
    target[key] = value
  end
  return target
end

local function clock(now)
  local safe = {}
  safe.time = function(spec)
    if spec == nil then
      return now
    end
    return real_os.time(spec)
  end
  safe.date = function(format, at)
    return real_os.date(format or "%c", at or now)
  end
  return safe
end

return function(script, chunkname, obj, open_libs, now, budget)
  local safe_os = clock(now)
  local env
  if open_libs then
    env = copy(real_G)
    local os_with_clock = copy(real_os)
    os_with_clock.time = safe_os.time
    os_with_clock.date = safe_os.date
    env.os = os_with_clock
    env.package = copy(real_G.package)
    env.package.loaded = copy(real_G.package.loaded)
    env.package.loaded.os = os_with_clock
  else
    env = {}
    for _, name in ipairs(base_names) do
      env[name] = real_G[name]
    end
    env.table = copy(real_table)
    env.os = safe_os
    env.package = {loaded = {os = safe_os, table = env.table}}
  end
  env._G = env
  env.require = function(name)
    local module = env.package and env.package.loaded and env.package.loaded[name]
    if module == nil and name == "os" then
      module = env.os
    end
    if module == nil then
      error("module '" .. tostring(name) .. "' not found")
    end
    return module
  end
  env.obj = obj

  local chunk, load_error = loadstring(script, chunkname)
  if chunk == nil then
    return false, load_error
  end
  setfenv(chunk, env)

  local string_metatable = real_debug.getmetatable("")
  if not open_libs then
    -- gopher-lua gives strings their methods only when the string library is opened.
    real_debug.setmetatable("", nil)
  end
  real_debug.sethook(function()
    error("script exceeded its instruction budget")
  end, "", budget)
  local ok, result = pcall(chunk)
  real_debug.sethook()
  real_debug.setmetatable("", string_metatable)
  return ok, result
end
"""


class LuaScriptError(RuntimeError):
    """The script failed to load or raised, or returned something Argo CD would reject."""


@dataclass(frozen=True)
class HealthStatus:
    status: str
    message: str


@dataclass(frozen=True)
class DiscoveredAction:
    name: str
    disabled: bool
    params: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ImpactedResource:
    resource: dict[str, Any]
    operation: str


class ArgoLua:
    """One Lua 5.1 state; each run gets a fresh environment, as each Argo CD run gets a fresh VM."""

    def __init__(self, *, open_libs: bool = False, now: int = FROZEN_NOW) -> None:
        self.open_libs = open_libs
        self.now = now
        self._runtime = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False)
        self._run = self._runtime.execute(_RUNNER)

    def run(self, script: str, obj: Mapping[str, Any], *, chunkname: str = "=script") -> Any:
        """The script's return value, as plain Python data."""
        outcome = self._run(
            script, chunkname, self._to_lua(obj), self.open_libs, self.now, INSTRUCTION_BUDGET
        )
        ok, result = outcome
        if not ok:
            raise LuaScriptError(str(result))
        return self._from_lua(result)

    def health(self, script: str, obj: Mapping[str, Any]) -> HealthStatus:
        result = self.run(script, obj, chunkname="=health.lua")
        if not isinstance(result, dict):
            raise LuaScriptError(f"expect table output from Lua script, not {type(result).__name__}")
        status = result.get("status")
        if status not in HEALTH_CODES:
            return HealthStatus("Unknown", INVALID_HEALTH_STATUS)
        message = result.get("message", "")
        if not isinstance(message, str):
            raise LuaScriptError(f"health message must be a string, not {type(message).__name__}")
        return HealthStatus(str(status), message)

    def discover(self, script: str, obj: Mapping[str, Any]) -> list[DiscoveredAction]:
        result = self.run(script, obj, chunkname="=discovery.lua")
        if result == []:
            return []
        if not isinstance(result, dict):
            raise LuaScriptError(f"expect table output from Lua script, not {type(result).__name__}")
        actions = []
        for name, spec in result.items():
            if spec == []:
                actions.append(DiscoveredAction(name, disabled=False))
                continue
            if not isinstance(spec, dict):
                raise LuaScriptError(f"action {name!r} must be described by a table")
            disabled = spec.get("disabled", False)
            params = spec.get("params", [])
            actions.append(DiscoveredAction(name, disabled=disabled is True, params=tuple(params or ())))
        return actions

    def act(self, script: str, obj: Mapping[str, Any]) -> list[ImpactedResource]:
        result = self.run(script, obj, chunkname="=action.lua")
        if isinstance(result, list) and result:
            impacted = []
            for item in result:
                if not isinstance(item, dict) or not isinstance(item.get("resource"), dict):
                    raise LuaScriptError("new-style action output needs {resource, operation} items")
                operation = str(item.get("operation", ""))
                resource = item["resource"]
                if operation == "patch":
                    resource = clean_returned_object(resource, obj)
                impacted.append(ImpactedResource(resource, operation))
            return impacted
        if not isinstance(result, dict):
            raise LuaScriptError("Lua output was not a valid json object or array")
        return [ImpactedResource(clean_returned_object(result, obj), "patch")]

    def _to_lua(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            table = self._runtime.table()
            for key, item in value.items():
                if item is not None:
                    table[str(key)] = self._to_lua(item)
            return table
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            table = self._runtime.table()
            for index, item in enumerate(value, start=1):
                table[index] = self._to_lua(item)
            return table
        if isinstance(value, bool | str) or value is None:
            return value
        if isinstance(value, int | float):
            # Argo CD hands every number to Lua as a float64.
            return float(value)
        return str(value)

    def _from_lua(self, value: Any) -> Any:
        if lua51.lua_type(value) == "table":
            items = list(value.items())
            keys = [key for key, _ in items]
            if all(isinstance(key, int | float) for key in keys) and sorted(keys) == list(
                range(1, len(keys) + 1)
            ):
                return [self._from_lua(item) for _, item in sorted(items, key=lambda pair: pair[0])]
            if not all(isinstance(key, str) for key in keys):
                raise LuaScriptError("a table mixes string and number keys: not JSON")
            return {key: self._from_lua(item) for key, item in items}
        if lua51.lua_type(value) is not None:
            raise LuaScriptError(f"a {lua51.lua_type(value)} cannot be encoded as JSON")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def clean_returned_object(new: dict[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """Gives back maps that came out of Lua as empty lists (Argo CD's ``cleanReturnedObj``)."""
    cleaned = dict(new)
    for key, old_value in old.items():
        if key not in cleaned:
            continue
        new_value = cleaned[key]
        if isinstance(new_value, dict) and isinstance(old_value, Mapping):
            cleaned[key] = clean_returned_object(new_value, old_value)
        elif isinstance(new_value, list):
            if isinstance(old_value, Mapping) and not new_value:
                cleaned[key] = dict(old_value)
            elif isinstance(old_value, list):
                cleaned[key] = _clean_returned_list(new_value, old_value)
    return cleaned


def _clean_returned_list(new: list[Any], old: list[Any]) -> list[Any]:
    cleaned = list(new)
    for index, new_value in enumerate(cleaned):
        if index >= len(old):
            break
        old_value = old[index]
        if isinstance(new_value, dict) and isinstance(old_value, Mapping):
            cleaned[index] = clean_returned_object(new_value, old_value)
        elif isinstance(new_value, list) and isinstance(old_value, list):
            cleaned[index] = _clean_returned_list(new_value, old_value)
    return cleaned
