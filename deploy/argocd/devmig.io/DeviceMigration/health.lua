-- Argo CD health of a devmig DeviceMigration (resource.customizations.health.devmig.io_DeviceMigration).
-- Healthy: the state moved, or a cancel asked in Git was honoured. Degraded: it failed or rolled back
-- (the source runs again; the message says why). Progressing: anything under way, with its phase,
-- progress, and what blocks it if something does.
local hs = {}
local function condition(t)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == t then return c end
    end
  end
  return nil
end
local function why()
  local f = obj.status.failure
  if f ~= nil then return f.reason .. ": " .. f.message end
  local ready = condition("Ready")
  if ready ~= nil then return ready.reason .. ": " .. ready.message end
  return "no reason recorded"
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the devmig controller"
  return hs
end
local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Moved to " .. obj.spec.target.node .. "/" .. (obj.status.targetDevice or "?")
  if obj.status.downtimeMs ~= nil then hs.message = hs.message .. " with " .. obj.status.downtimeMs .. " ms of downtime" end
  return hs
end
if phase == "Cancelled" and obj.spec.cancel == true then
  hs.status = "Healthy"
  hs.message = "Cancelled as asked; the source runs"
  return hs
end
if phase == "Failed" or phase == "RolledBack" or phase == "Cancelled" then
  hs.status = "Degraded"
  hs.message = phase .. " (" .. why() .. ")"
  return hs
end
hs.status = "Progressing"
hs.message = phase
if obj.status.progress ~= nil then hs.message = hs.message .. " " .. obj.status.progress end
local blocked = condition("Blocked")
if blocked ~= nil and blocked.status == "True" then
  hs.message = hs.message .. "; blocked: " .. blocked.reason .. ": " .. blocked.message
end
return hs
