-- Actions Argo CD offers on a CvmPreLaunchScript. Runs without Lua's standard libraries.
local actions = {}
local suspended = obj.spec ~= nil and obj.spec.suspend == true
-- A refresh of a suspended resource would only be queued, so it is offered once resumed.
actions["refresh"] = {["disabled"] = suspended}
actions["suspend"] = {["disabled"] = suspended}
actions["resume"] = {["disabled"] = not suspended}
return actions
