/**
 * What each device holds (DESIGN.md invariant 7). The agent is the authority: its journal records,
 * for every device, whether it is free to receive or holds a workload's state (which migration put
 * it there, its digest, since when), and the kubelet says which pods it allocated devices to. Only a
 * free device that no pod has receives, whatever the controller asks. A device becomes free only by
 * a reset: a migration's source once its target runs, a target whose migration rolled back, or a
 * DeviceRelease.
 */
import type { Occupancy, PodAllocation } from '../api/types.js';
import { describeOccupancy } from '../api/occupancy.js';
import type { FreeRequest } from '../agentapi/types.js';
import { deviceOf, once, type AgentContext, type Reply } from './context.js';
import { AgentError } from './errors.js';
import { RELEASE_KEY, type OccupancyRecord } from './journal.js';

const now = () => new Date().toISOString();

export const holding = (migration: string, digest: string | undefined): OccupancyRecord =>
  ({ state: 'Holding', reason: 'Migrated', since: now(), migration, ...(digest ? { digest } : {}) });

export const freed = (reason: 'SourceReleased' | 'RolledBack', migration: string): OccupancyRecord =>
  ({ state: 'Free', reason, since: now(), migration });

/** Whether the agent's config declares `device` spare: free to receive from the first time it is seen. */
export function declaredSpare(ctx: AgentContext, device: string): boolean {
  const spare = ctx.config.devices.spare;
  return spare.includes('*') || spare.includes(device);
}

/**
 * Devices the journal has no record of (the agent's first start, or a device new since) are not
 * known to be free: on a real node a VM may run on one. Only the config can say they are spare.
 */
export async function recordFirstSight(ctx: AgentContext): Promise<void> {
  for (const d of ctx.devices.list()) {
    if (ctx.journal.get(d.name).occupancy) continue;
    const occupancy: OccupancyRecord = declaredSpare(ctx, d.name)
      ? { state: 'Free', reason: 'Spare', since: now() }
      : { state: 'Holding', reason: 'FoundInUse', since: now() };
    await ctx.journal.step(d.name, { occupancy });
    ctx.log.info({ device: d.name, occupancy: occupancy.reason }, 'first sight of the device: recorded what it holds');
  }
}

/** The pods the kubelet allocated `device` to (empty without a PodResources source). */
export function podsOf(ctx: AgentContext, device: string): PodAllocation[] {
  return ctx.allocations?.of(device) ?? [];
}

/** Nothing is given to a device while the kubelet's allocations are unknown: asked again later. */
function allocationsKnown(ctx: AgentContext, device: string, what: string): void {
  const why = ctx.allocations?.unknown();
  if (why) throw new AgentError(503, 'PodResourcesUnavailable', `cannot ${what} device ${device}: whether the kubelet gave it to a pod is not known (${why}); ask again`);
}

/** The device's occupancy as published: the journal's record, with the kubelet's allocations over it. */
export function occupancyOf(ctx: AgentContext, device: string): Occupancy | undefined {
  const rec = ctx.journal.get(device).occupancy;
  const pods = podsOf(ctx, device);
  if (!rec) return undefined;
  return pods.length ? { ...rec, state: 'Allocated', pods } : rec;
}

/**
 * The agent's own refusal to receive onto a device that is not free: the last line, whatever the
 * controller decided. Says what the device holds and how to free it.
 */
export function mayReceive(ctx: AgentContext, device: string): void {
  allocationsKnown(ctx, device, 'receive onto');
  const o = occupancyOf(ctx, device);
  if (o?.state === 'Free') return;
  const node = ctx.config.node;
  const how = o?.state === 'Allocated'
    ? 'a device a pod owns is never a migration target; pick another target device'
    : `pick another target device, or release this one first (kubectl devmig release ${node}/${device}, or a DeviceRelease), which resets it` +
      (o?.reason === 'FoundInUse' ? `; if it holds nothing, declare it spare in the agent's config (devices.spare)` : '');
  throw new AgentError(409, 'DeviceOccupied', `device ${device} on node ${node} ${describeOccupancy(o)}: it cannot receive another workload's state; ${how}`,
    { occupancy: o });
}

/**
 * POST /v1/devices/D/free: a DeviceRelease. The device is reset (no copy of a workload's state stays
 * where another workload may read it), then recorded free, in the op's own journal write. Refused
 * while a migration holds the device or a pod has it. Once per DeviceRelease: a repeat answers what
 * the first did.
 */
export async function freeDevice(ctx: AgentContext, device: string, req: FreeRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  return once(ctx, device, `${RELEASE_KEY}${req.release}`, req.op, req, () => d.exclusive(async () => {
    const e = ctx.journal.get(device);
    const active = ctx.sessions.forDevice(device);
    if (e.migration || active) {
      const m = e.migration ?? active!.migration;
      throw new AgentError(409, 'DeviceBusy', `device ${device} is in use by migration ${m} (role ${e.role ?? active?.role ?? '?'}, step ${e.step ?? '?'}); ` +
        'wait for it to finish or cancel it, then release the device', { holder: m });
    }
    allocationsKnown(ctx, device, 'release');
    const pods = podsOf(ctx, device);
    if (pods.length) {
      throw new AgentError(409, 'DeviceAllocated', `device ${device} ${describeOccupancy(occupancyOf(ctx, device))}; ` +
        'the pod owns it: delete the pod (or let it end) before releasing the device', { pods });
    }
    const previous = occupancyOf(ctx, device);
    await d.device.reset();
    const occupancy: OccupancyRecord = {
      state: 'Free', reason: 'Released', since: now(), release: req.release, ...(req.requestedBy ? { releasedBy: req.requestedBy } : {}),
    };
    ctx.log.info({ device, release: req.release, by: req.requestedBy, previous }, 'device released: reset, and free to receive');
    return { status: 200, body: { freed: true, state: await d.device.getState(), occupancy, ...(previous ? { previous } : {}) }, step: `freed:${req.release}`, occupancy };
  }));
}
