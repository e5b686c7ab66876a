-- Stops every remote call for this resource until it is resumed.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.suspend = true
return obj
