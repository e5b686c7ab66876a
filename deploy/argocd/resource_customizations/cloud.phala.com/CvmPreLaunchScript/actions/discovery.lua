-- Actions Argo CD offers on a CvmPreLaunchScript. Runs without Lua's standard libraries.
local actions = {}
local suspended = type(obj.spec) == "table" and obj.spec.suspend == true
-- A refresh of a suspended resource would only be queued, so it is offered once resumed.
actions["refresh"] = {["disabled"] = suspended}
actions["suspend"] = {["disabled"] = suspended}
actions["resume"] = {["disabled"] = not suspended}

-- approve: only while a compose hash waits for a person (same test as actions/approve/action.lua).
local awaiting = false
local status = obj.status
if type(status) == "table" and status.phase == "AwaitingApproval" and type(status.pendingApproval) == "table" then
  local pending = status.pendingApproval.composeHash
  awaiting = type(pending) == "string" and #pending == 66
end
actions["approve"] = {["disabled"] = not awaiting}
return actions
