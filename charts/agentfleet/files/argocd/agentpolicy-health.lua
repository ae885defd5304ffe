-- Argo CD health check for agentfleet.dev/AgentPolicy: the body of argocd-cm's
-- resource.customizations.health.agentfleet.dev_AgentPolicy (docs/observability.md).
--   a generation the operator has not counted yet -> Progressing; spec.suspendAll (the fleet
--   kill switch) -> Suspended; covered agents violating it -> Degraded; else Healthy.
-- Tested by tests/integration/test_argocd_health.py (Lua 5.1).
local hs = {}
local status = obj.status
local generation = obj.metadata.generation
if status == nil or (generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for the agentfleet operator to count the covered agents"
  return hs
end

local covered = status.coveredAgents or 0
local violations = status.violations or 0
if obj.spec ~= nil and obj.spec.suspendAll == true then
  hs.status = "Suspended"
  hs.message = "Fleet kill switch on: its " .. tostring(covered) .. " covered agents are suspended"
  return hs
end

if violations > 0 then
  hs.status = "Degraded"
  hs.message = tostring(violations) .. " of " .. tostring(covered) .. " covered agents violate this policy"
  return hs
end

hs.status = "Healthy"
hs.message = "Covers " .. tostring(covered) .. " agents, none violating it"
return hs
