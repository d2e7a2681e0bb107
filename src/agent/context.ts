/** What every handler works with: the node's devices, its journal, its sessions, and who is asking. */
import type { Logger } from 'pino';
import type { SetStateResult } from '../vfio/device.js';
import type { AgentConfig } from './config.js';
import type { DeviceRegistry, ManagedDevice } from './devices.js';
import { AgentError, notFound } from './errors.js';
import { requestHash, type Journal } from './journal.js';
import type { SessionTable } from './sessions.js';
import type { TlsMaterial } from '../relay/h2.js';
import type { AllocationSource } from './allocations.js';
import type { OccupancyRecord } from './journal.js';

export interface AgentContext {
  readonly config: AgentConfig;
  readonly devices: DeviceRegistry;
  readonly journal: Journal;
  readonly sessions: SessionTable;
  /** Replaced in place when a certificate from the cluster is renewed; read it at each use. */
  tls: TlsMaterial;
  readonly log: Logger;
  draining: boolean;
  /** The pods the kubelet allocated a device to (the PodResources API), when the agent reads it. */
  allocations?: AllocationSource;
}

export interface Reply {
  readonly status: number;
  readonly body: unknown;
  /** For an op: the journal step to record with its answer, in the same durable write. */
  readonly step?: string;
  /** For an op: the migration lets go of the device with this answer, in the same durable write. */
  readonly release?: boolean;
  /** For an op: what the device holds after it, recorded in the same durable write. */
  readonly occupancy?: OccupancyRecord;
}

export function deviceOf(ctx: AgentContext, name: string): ManagedDevice {
  const d = ctx.devices.get(name);
  if (!d) {
    const known = ctx.devices.list().map((x) => x.name).join(', ') || 'none';
    throw notFound(`no device "${name}" on node ${ctx.config.node} (devices here: ${known})`);
  }
  return d;
}

/** Refuses a device that another migration holds. */
export function claim(ctx: AgentContext, device: string, migration: string): void {
  const e = ctx.journal.get(device);
  if (e.migration && e.migration !== migration) {
    throw new AgentError(409, 'DeviceBusy', `device ${device} is in use by migration ${e.migration} (role ${e.role ?? '?'}, step ${e.step ?? '?'}); ` +
      'wait for it to finish or cancel it', { holder: e.migration });
  }
}

/** Ops under way, per journal (one per agent): a repeat that arrives meanwhile waits for the first. */
const running = new WeakMap<Journal, Map<string, { hash: string; reply: Promise<Reply> }>>();

/**
 * Runs an op once: a repeat of (migration, op) with the same request returns the recorded answer (or,
 * while the first still runs, its answer when it comes); with a different request it is refused, since
 * the op id already means something else.
 */
export async function once(ctx: AgentContext, device: string, migration: string, op: string, request: unknown,
  act: () => Promise<Reply>): Promise<Reply> {
  const hash = requestHash(request);
  const conflict = () => new AgentError(409, 'OpConflict', `op "${op}" of migration ${migration} on ${device} was already done with other parameters; use a new op id`);
  const prev = ctx.journal.findOp(device, migration, op);
  if (prev) {
    if (prev.request !== hash) throw conflict();
    return { status: prev.status, body: { ...(prev.result as object), replayed: true } };
  }
  let table = running.get(ctx.journal);
  if (!table) {
    table = new Map<string, { hash: string; reply: Promise<Reply> }>();
    running.set(ctx.journal, table);
  }
  const key = `${device}/${migration}/${op}`;
  const first = table.get(key);
  if (first) {
    if (first.hash !== hash) throw conflict();
    const r = await first.reply;
    return { ...r, body: { ...(r.body as object), replayed: true } };
  }
  const reply = (async () => {
    const r = await act();
    const rec = { op, request: hash, status: r.status, result: r.body, at: new Date().toISOString() };
    await (r.release ? ctx.journal.release(device, migration, rec, r.occupancy) : ctx.journal.recordOp(device, migration, rec, { step: r.step, occupancy: r.occupancy }));
    return r;
  })();
  table.set(key, { hash, reply });
  try {
    return await reply;
  } finally {
    table.delete(key);
  }
}

/** The answer for a walk of arcs: 200 when it reached its state, 422 with the failed arc otherwise. */
export function arcsReply(r: SetStateResult, extra: Record<string, unknown> = {}): Reply {
  const body = { arcs: r.arcs, state: r.state, ...extra };
  if (!r.error) return { status: 200, body };
  return { status: 422, body: { ...body, error: { code: 'ArcFailed', errno: r.error.errno, message: r.error.message } } };
}
