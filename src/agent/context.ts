/** What every handler works with: the node's devices, its journal, its sessions, and who is asking. */
import type { Logger } from 'pino';
import type { SetStateResult } from '../vfio/device.js';
import type { AgentConfig } from './config.js';
import type { DeviceRegistry, ManagedDevice } from './devices.js';
import { AgentError, notFound } from './errors.js';
import { requestHash, type Journal } from './journal.js';
import type { SessionTable } from './sessions.js';
import type { TlsMaterial } from '../relay/h2.js';

export interface AgentContext {
  readonly config: AgentConfig;
  readonly devices: DeviceRegistry;
  readonly journal: Journal;
  readonly sessions: SessionTable;
  /** Replaced in place when a certificate from the cluster is renewed; read it at each use. */
  tls: TlsMaterial;
  readonly log: Logger;
  draining: boolean;
}

export interface Reply {
  readonly status: number;
  readonly body: unknown;
  /** For an op: the journal step to record with its answer, in the same durable write. */
  readonly step?: string;
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

/**
 * Runs an op once: a repeat of (migration, op) with the same request returns the recorded answer; with
 * a different request it is refused, since the op id already means something else.
 */
export async function once(ctx: AgentContext, device: string, migration: string, op: string, request: unknown,
  act: () => Promise<Reply>): Promise<Reply> {
  const hash = requestHash(request);
  const prev = ctx.journal.findOp(device, migration, op);
  if (prev) {
    if (prev.request !== hash) {
      throw new AgentError(409, 'OpConflict', `op "${op}" of migration ${migration} on ${device} was already done with other parameters; use a new op id`);
    }
    return { status: prev.status, body: { ...(prev.result as object), replayed: true } };
  }
  const reply = await act();
  await ctx.journal.recordOp(device, migration, { op, request: hash, status: reply.status, result: reply.body, at: new Date().toISOString() }, reply.step);
  return reply;
}

/** The answer for a walk of arcs: 200 when it reached its state, 422 with the failed arc otherwise. */
export function arcsReply(r: SetStateResult, extra: Record<string, unknown> = {}): Reply {
  const body = { arcs: r.arcs, state: r.state, ...extra };
  if (!r.error) return { status: 200, body };
  return { status: 422, body: { ...body, error: { code: 'ArcFailed', errno: r.error.errno, message: r.error.message } } };
}
