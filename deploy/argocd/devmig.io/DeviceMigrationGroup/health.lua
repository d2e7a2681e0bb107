-- Argo CD health of a devmig DeviceMigrationGroup (resource.customizations.health.devmig.io_DeviceMigrationGroup).
-- Healthy: every device moved, or a cancel asked in Git was honoured. Degraded: the group rolled back
-- or failed (the message names the member that failed first). Progressing: under way.
local hs = {}
local function ready()
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Ready" then return c end
    end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the devmig controller"
  return hs
end
local phase = obj.status.phase
local n = #obj.spec.members
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = n .. " device(s) moved together"
  if obj.status.downtimeMs ~= nil then hs.message = hs.message .. " with " .. obj.status.downtimeMs .. " ms of downtime" end
  return hs
end
if phase == "Cancelled" and obj.spec.cancel == true then
  hs.status = "Healthy"
  hs.message = "Cancelled as asked; every source runs"
  return hs
end
local r = ready()
if phase == "RolledBack" or phase == "Failed" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = phase
  if r ~= nil then hs.message = phase .. " (" .. r.reason .. ": " .. r.message .. ")" end
  return hs
end
hs.status = "Progressing"
hs.message = phase .. " (" .. n .. " devices)"
if r ~= nil and r.message ~= nil then hs.message = hs.message .. ": " .. r.message end
return hs
