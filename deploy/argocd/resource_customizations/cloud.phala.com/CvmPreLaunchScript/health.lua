-- Argo CD health of a cloud.phala.com/CvmPreLaunchScript.
--
-- Argo CD runs this without Lua's standard libraries (no string, math or io), so only base
-- functions and operators are used. Numbers are compared through tonumber() because Argo CD
-- may hand over an int64 field as a string (json.Number).
--
--   Suspended    spec.suspend is true
--   Degraded     Stalled=True for the current generation (a permanent failure)
--   Healthy      Ready=True, and both the Ready condition and the status describe the
--                current generation
--   Progressing  anything else: no status yet, a status of an older generation, work under
--                way (Reconciling=True) or Ready=False while waiting (e.g. AwaitingApproval)

local health = {}

local function same_generation(a, b)
  if a == nil or b == nil then
    return false
  end
  return tonumber(a) == tonumber(b)
end

local function find_condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == wanted then
      return condition
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two is there.
local function describe(condition)
  local reason = condition.reason
  local message = condition.message
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

if obj.spec ~= nil and obj.spec.suspend == true then
  health.status = "Suspended"
  health.message = "Reconciliation is suspended (spec.suspend is true)"
  return health
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status

if status == nil or status.observedGeneration == nil then
  health.status = "Progressing"
  health.message = "Waiting for the operator to report a status"
  return health
end

-- A condition without its own observedGeneration speaks for the status' generation.
local function is_current(condition)
  if generation == nil then
    return true
  end
  local observed = condition.observedGeneration
  if observed == nil then
    observed = status.observedGeneration
  end
  return same_generation(observed, generation)
end

if generation ~= nil and not same_generation(status.observedGeneration, generation) then
  health.status = "Progressing"
  health.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status describes generation " .. tostring(status.observedGeneration) .. ")"
  return health
end

local stalled = find_condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" and is_current(stalled) then
  health.status = "Degraded"
  health.message = describe(stalled)
  if health.message == "" then
    health.message = "Stalled"
  end
  return health
end

local ready = find_condition(status.conditions, "Ready")
if ready ~= nil and ready.status == "True" and is_current(ready) then
  health.status = "Healthy"
  health.message = describe(ready)
  return health
end

health.status = "Progressing"
if ready == nil then
  health.message = "Waiting for the operator to set the Ready condition"
elseif not is_current(ready) then
  health.message = "Waiting for the Ready condition of generation " .. tostring(generation)
    .. " (it describes generation " .. tostring(ready.observedGeneration) .. ")"
else
  local reconciling = find_condition(status.conditions, "Reconciling")
  local detail = describe(ready)
  if detail == "" and reconciling ~= nil and reconciling.status == "True" and is_current(reconciling) then
    detail = describe(reconciling)
  end
  health.message = "Not ready yet"
  if detail ~= "" then
    health.message = health.message .. " (" .. detail .. ")"
  end
end
return health
