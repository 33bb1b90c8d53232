-- Argo CD health of a garret.dev BinaryCache, from the kstatus conditions the operator
-- writes (Ready, Reconciling, Stalled; Reconciling and Stalled are abnormal-true). Uses only
-- what Argo CD gives a ConfigMap customization without useOpenLibs (base and table).
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  found[c.type] = c
end
local function is_true(t)
  return found[t] ~= nil and found[t].status == "True"
end
if is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = found["Stalled"].message
  return hs
end
if is_true("Reconciling") then
  hs.status = "Progressing"
  hs.message = found["Reconciling"].message
  return hs
end
if is_true("Ready") then
  hs.status = "Healthy"
  hs.message = found["Ready"].message
  return hs
end
hs.status = "Progressing"
if found["Ready"] ~= nil then
  hs.message = found["Ready"].message
else
  hs.message = "Waiting for the Ready condition"
end
return hs
