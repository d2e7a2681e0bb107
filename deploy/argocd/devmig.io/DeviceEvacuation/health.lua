-- Argo CD health of a devmig DeviceEvacuation (resource.customizations.health.devmig.io_DeviceEvacuation).
-- Healthy: every device moved, or a cancel asked in Git was honoured. Degraded: it ended with devices
-- that did not move (the message names the first and why). Progressing: under way, with the counts,
-- and why it waits when no target is free.
local hs = {}
local function condition(t)
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == t then return c end
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
local c = obj.status.counts or { total = 0, succeeded = 0, running = 0, failed = 0, waiting = 0 }
local counts = c.succeeded .. " of " .. c.total .. " moved"
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Moved " .. c.total .. " device(s) off " .. obj.spec.node
  return hs
end
if phase == "Cancelled" and obj.spec.cancel == true then
  hs.status = "Healthy"
  hs.message = "Cancelled as asked; " .. counts
  return hs
end
if phase == "Failed" or phase == "PartiallyFailed" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. counts .. ", " .. c.failed .. " failed"
  if obj.status.devices ~= nil then
    for _, d in ipairs(obj.status.devices) do
      if d.reason ~= nil and d.phase ~= "Succeeded" then
        hs.message = hs.message .. " (" .. d.device .. ": " .. d.reason .. ": " .. (d.message or "") .. ")"
        break
      end
    end
  end
  return hs
end
hs.status = "Progressing"
hs.message = phase .. ": " .. counts .. ", " .. c.running .. " moving, " .. c.waiting .. " waiting"
local targets = condition("TargetsAvailable")
if targets ~= nil and targets.status == "False" then
  hs.message = hs.message .. "; " .. targets.reason .. ": " .. targets.message
end
return hs
