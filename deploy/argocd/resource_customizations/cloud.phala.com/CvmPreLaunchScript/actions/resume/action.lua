-- Lets the operator reconcile this resource again.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = false
return obj
