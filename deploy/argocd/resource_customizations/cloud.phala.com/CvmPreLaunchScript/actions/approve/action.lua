-- Approves the compose hash the resource waits for: sets the annotation
-- cloud.phala.com/approved-compose-hash to status.pendingApproval.composeHash, exactly as the
-- operator wrote it. The operator signs a hash only when the annotation names the very hash it
-- is asked to register, so an approval that arrives after the pending hash changed approves
-- nothing else. Runs without Lua's standard libraries.
local annotation = "cloud.phala.com/approved-compose-hash"

local status = obj.status
local phase = nil
local pending = nil
if type(status) == "table" then
  phase = status.phase
  if type(status.pendingApproval) == "table" then
    pending = status.pendingApproval.composeHash
  end
end
-- 0x and 64 hex digits: the length is all base Lua can check; the operator checks the rest.
if phase ~= "AwaitingApproval" or type(pending) ~= "string" or #pending ~= 66 then
  error("nothing pending approval (phase " .. tostring(phase) .. ")", 0)
end

if type(obj.metadata.annotations) ~= "table" then
  obj.metadata.annotations = {}
end
obj.metadata.annotations[annotation] = pending
return obj
