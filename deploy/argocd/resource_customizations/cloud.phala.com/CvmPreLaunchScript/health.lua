-- Argo CD health of a cloud.phala.com/CvmPreLaunchScript.
--
-- Argo CD runs this without Lua's standard libraries (no string, math or io), so only base
-- functions and operators are used. Numbers are compared through tonumber() because Argo CD
-- may hand over an int64 field as a string (json.Number). Every field is type-checked before
-- use: a malformed status (a condition that is not a table, a field of another type) gives a
-- verdict, never an error.
--
-- In this order (deploy/flux/ states the same rules in CEL, tested on the same testdata):
--   Progressing  no status yet, or a status of an older generation
--   Suspended    spec.suspend is true (and the operator has seen it)
--   Degraded     Stalled=True for the current generation (a permanent failure)
--   Progressing  Reconciling=True for the current generation (work under way, even if Ready=True)
--   Healthy      Ready=True for the current generation
--   Degraded     Ready=False with reason Drifted (driftPolicy Report: the CVM runs another script)
--   Progressing  anything else, e.g. Ready=False while waiting (AwaitingApproval)

local health = {}

local function text(value)
  if type(value) == "string" then
    return value
  end
  return nil
end

local function same_generation(a, b)
  local x = tonumber(a)
  local y = tonumber(b)
  return x ~= nil and y ~= nil and x == y
end

local metadata = obj.metadata
if type(metadata) ~= "table" then
  metadata = {}
end
local spec = obj.spec
if type(spec) ~= "table" then
  spec = {}
end
local generation = metadata.generation
local status = obj.status

if type(status) ~= "table" or status.observedGeneration == nil then
  health.status = "Progressing"
  health.message = "Waiting for the operator to report a status"
  return health
end

if generation ~= nil and not same_generation(status.observedGeneration, generation) then
  health.status = "Progressing"
  health.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status describes generation " .. tostring(status.observedGeneration) .. ")"
  return health
end

if spec.suspend == true then
  health.status = "Suspended"
  health.message = "Reconciliation is suspended (spec.suspend is true)"
  return health
end

-- A condition without its own observedGeneration speaks for the status' generation, which is
-- the current one by now.
local function is_current(condition)
  if generation == nil or condition.observedGeneration == nil then
    return true
  end
  return same_generation(condition.observedGeneration, generation)
end

-- The first condition (in list order) of this type, and of this status and reason when given,
-- that describes the current generation; ``any_generation`` drops that last test. pairs() with
-- number keys only: holes (JSON nulls) are skipped and a map where the list belongs counts as no
-- conditions, as in the CEL of deploy/flux/, which asks the same "is there such a condition?".
local function find(wanted_type, wanted_status, wanted_reason, any_generation)
  local conditions = status.conditions
  if type(conditions) ~= "table" then
    return nil
  end
  local found = nil
  local found_at = nil
  for index, condition in pairs(conditions) do
    if type(index) == "number" and type(condition) == "table" and condition.type == wanted_type
      and (wanted_status == nil or condition.status == wanted_status)
      and (wanted_reason == nil or condition.reason == wanted_reason)
      and (any_generation or is_current(condition))
      and (found_at == nil or index < found_at) then
      found = condition
      found_at = index
    end
  end
  return found
end

-- "Reason: message", or whichever of the two is there.
local function describe(condition)
  local reason = text(condition.reason)
  local message = text(condition.message)
  if reason ~= nil and reason ~= "" and message ~= nil and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= nil and message ~= "" then
    return message
  end
  if reason ~= nil and reason ~= "" then
    return reason
  end
  return ""
end

local function answer(verdict, condition, fallback)
  health.status = verdict
  health.message = describe(condition)
  if health.message == "" then
    health.message = fallback
  end
  return health
end

local stalled = find("Stalled", "True")
if stalled ~= nil then
  return answer("Degraded", stalled, "Stalled")
end

local reconciling = find("Reconciling", "True")
if reconciling ~= nil then
  return answer("Progressing", reconciling, "Reconciling")
end

local ready = find("Ready", "True")
if ready ~= nil then
  return answer("Healthy", ready, "Ready")
end
local drifted = find("Ready", "False", "Drifted")
if drifted ~= nil then
  return answer("Degraded", drifted, "Drifted")
end

health.status = "Progressing"
ready = find("Ready", nil, nil, true)
if ready == nil then
  health.message = "Waiting for the operator to set the Ready condition"
elseif not is_current(ready) then
  health.message = "Waiting for the Ready condition of generation " .. tostring(generation)
    .. " (it describes generation " .. tostring(ready.observedGeneration) .. ")"
else
  local detail = describe(ready)
  health.message = "Not ready yet"
  if detail ~= "" then
    health.message = health.message .. " (" .. detail .. ")"
  end
end
return health
