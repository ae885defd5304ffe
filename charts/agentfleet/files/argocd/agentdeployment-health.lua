-- Argo CD health check for agentfleet.dev/AgentDeployment: the body of argocd-cm's
-- resource.customizations.health.agentfleet.dev_AgentDeployment (docs/observability.md).
-- Maps the operator's status (phase and conditions) to Argo CD's health:
--   Running -> Healthy; Pending, Progressing, or a generation the operator has not observed
--   yet -> Progressing; Suspended -> Suspended; RolledBack, Degraded, PolicyViolation and
--   BudgetExceeded -> Degraded. Tested by tests/integration/test_argocd_health.py (Lua 5.1).
local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the agentfleet operator to reconcile the agent"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the agentfleet operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local violation = condition(status, "PolicyViolation")
if phase == "PolicyViolation" or (violation ~= nil and violation.status == "True") then
  hs.status = "Degraded"
  hs.message = message(violation, "The agent violates an AgentPolicy")
  return hs
end

local progressing = condition(status, "Progressing")
if phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = message(progressing, "The agent's spec cannot be carried out")
  return hs
end

local suspended = condition(status, "Suspended")
if phase == "Suspended" or (suspended ~= nil and suspended.status == "True") then
  hs.status = "Suspended"
  hs.message = message(suspended, "The agent is suspended")
  return hs
end

local rolledBack = condition(status, "RolledBack")
if phase == "RolledBack" or (rolledBack ~= nil and rolledBack.status == "True") then
  hs.status = "Degraded"
  hs.message = message(rolledBack, "The agent was rolled back to its stable revision")
  return hs
end

local budget = condition(status, "BudgetExceeded")
if budget ~= nil and budget.status == "True" then
  hs.status = "Degraded"
  hs.message = message(budget, "The agent's budget is exhausted")
  return hs
end

local ready = condition(status, "Ready")
if phase == "Running" then
  hs.status = "Healthy"
  hs.message = message(ready, "Ready " .. tostring(status.ready or ""))
  return hs
end

hs.status = "Progressing"
hs.message = message(progressing, "Ready " .. tostring(status.ready or "0"))
return hs
