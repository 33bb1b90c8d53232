-- Argo CD health of a garret.dev CacheToken, from the conditions the operator writes:
-- kstatus' Ready, Reconciling, Stalled (abnormal-true) and cert-manager's Issuing. Healthy
-- only once a token is in its Secret. Uses only base and table (no useOpenLibs needed).
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to issue a token"
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
if is_true("Issuing") then
  hs.status = "Progressing"
  hs.message = found["Issuing"].message
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
