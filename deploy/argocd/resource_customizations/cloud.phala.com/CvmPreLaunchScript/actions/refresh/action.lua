-- Asks the operator for an immediate re-sync: any new value of the annotation
-- cloud.phala.com/requested-at triggers one, and the value records when it was asked for.
--
-- "os" is Argo CD's safe subset (time and date only), which it loads even without
-- useOpenLibs, so this action needs no extra privilege.
local os = require("os")
local annotation = "cloud.phala.com/requested-at"

if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local requested_at = os.date("!%Y-%m-%dT%H:%M:%SZ")
-- Two requests within one second would write the same value, which the API server treats as
-- no change and the operator would never see; a fractional second keeps it RFC 3339 and new.
if obj.metadata.annotations[annotation] == requested_at then
  requested_at = os.date("!%Y-%m-%dT%H:%M:%S") .. ".5Z"
end
obj.metadata.annotations[annotation] = requested_at
return obj
