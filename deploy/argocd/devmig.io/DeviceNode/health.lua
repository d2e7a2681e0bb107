-- Argo CD health of a devmig DeviceNode (resource.customizations.health.devmig.io_DeviceNode): the
-- node's agent publishes it; Healthy while the agent says it is ready.
local hs = {}
if obj.status == nil or obj.status.ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the node's devmig agent"
  return hs
end
local n = 0
if obj.status.devices ~= nil then n = #obj.status.devices end
if obj.status.ready == true then
  hs.status = "Healthy"
  hs.message = n .. " migratable device(s)"
else
  hs.status = "Degraded"
  hs.message = "The agent is not ready (draining, or stopped); last heartbeat " .. (obj.status.heartbeat or "never")
end
return hs
