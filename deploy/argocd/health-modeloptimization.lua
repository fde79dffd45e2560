-- Argo CD health check for kompress.dev/ModelOptimization
-- (argocd-cm key: resource.customizations.health.kompress.dev_ModelOptimization).
-- Argo CD passes the live object as `obj` and expects {status = ..., message = ...}. Lua 5.1 (gopher-lua).
--   Healthy:     phase Succeeded, or condition Ready=True
--   Degraded:    phase Failed or Rejected, or condition Stalled=True
--   Progressing: no status yet, phase Pending/Running/Evaluating, or the operator has not yet observed the
--                latest spec (status.observedGeneration < metadata.generation)
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function message_of(status, preferred)
  for _, ctype in ipairs(preferred) do
    local c = condition(status, ctype)
    if c ~= nil and c.message ~= nil and c.message ~= "" then
      return c.message
    end
  end
  if status.message ~= nil and status.message ~= "" then
    return status.message
  end
  if status.phase ~= nil then
    return "Phase " .. status.phase
  end
  return ""
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kompress operator to accept the optimization"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the kompress operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(status, {"Stalled", "Ready"})
  return hs
end

local phase = status.phase
if phase == "Failed" or phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = message_of(status, {"Ready", "GatesPassed", "Stalled"})
  return hs
end

local ready = condition(status, "Ready")
if phase == "Succeeded" or (ready ~= nil and ready.status == "True") then
  hs.status = "Healthy"
  hs.message = message_of(status, {"Ready", "Promoted"})
  return hs
end

hs.status = "Progressing"
hs.message = message_of(status, {"Ready", "JobRunning", "Accepted"})
return hs
