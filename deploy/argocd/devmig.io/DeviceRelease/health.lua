-- Argo CD health of a devmig DeviceRelease (resource.customizations.health.devmig.io_DeviceRelease):
-- Healthy once the device was reset and is free; Progressing while it is released or waits (for a
-- migration or a pod that has the device), with why; Degraded when it failed (no such node or device).
local hs = {}
local function ready()
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then return c end
  end
  return nil
end
local phase = obj.status and obj.status.phase or "Pending"
local c = ready()
if phase == "Released" then
  hs.status = "Healthy"
  hs.message = obj.spec.node .. "/" .. obj.spec.device .. " released by " .. (obj.status.releasedBy or "?") .. " at " .. (obj.status.releasedAt or "?")
elseif phase == "Failed" then
  hs.status = "Degraded"
  local f = obj.status.failure or {}
  hs.message = (f.reason or "Failed") .. ": " .. (f.message or "")
else
  hs.status = "Progressing"
  hs.message = c and (c.reason .. ": " .. c.message) or "Waiting for the devmig controller"
end
return hs
