/**
 * Role-neutral operations: drive a device to a state, reset it, release it from a migration, report
 * it, and cancel a migration on this node with both devices left in states the answer reports.
 */
import type { DeviceView, ReleaseRequest, ResetRequest, SessionView, SetStateRequest, CancelRequest } from '../agentapi/types.js';
import { arcsReply, claim, deviceOf, once, type AgentContext, type Reply } from './context.js';
import { AgentError } from './errors.js';
import { finish, isActive, viewOf } from './sessions.js';
import { flagNames, type MigStateName } from '../vfio/uapi.js';
import { AgentClient } from '../agentapi/client.js';
import { hasCommitted } from './target.js';
import { settleWithin } from '../async.js';
import { freed, occupancyOf } from './occupancy.js';

export async function setState(ctx: AgentContext, device: string, req: SetStateRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    // Out of RESUMING goes only the commit, on a verified stream (invariant 5; hasCommitted relies on it).
    const now = await d.device.getState();
    if (now === 'RESUMING' && req.state !== 'RESUMING') {
      throw new AgentError(409, 'UseCommit', `device ${device} is RESUMING: only the commit op takes it on (to STOP), once its stream is verified; ` +
        'to abort, cancel the migration or reset the device');
    }
    await ctx.journal.step(device, { migration: req.migration, step: `state:${req.state}` });
    return arcsReply(await d.device.setState(req.state as MigStateName));
  }));
}

export async function reset(ctx: AgentContext, device: string, req: ResetRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    await abortSessionsOf(ctx, device, 'the device is being reset');
    // On record before the reset, like every move of a target but its commit (see hasCommitted).
    await ctx.journal.step(device, { step: 'reset:intent' });
    await d.device.reset();
    // A target reset by its migration held nothing but that migration's partial state: free again.
    // Any other device keeps its record: a reset never makes a device count as free on its own.
    const e = ctx.journal.get(device);
    await ctx.journal.step(device, { step: 'reset', ...(e.role === 'target' && e.migration === req.migration ? { occupancy: freed('RolledBack', req.migration) } : {}) });
    return { status: 200, body: { state: await d.device.getState() } };
  }));
}

export async function release(ctx: AgentContext, device: string, req: ReleaseRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  const idle = () => {
    const active = ctx.sessions.forDevice(device);
    if (active) throw new AgentError(409, 'DeviceBusy', `device ${device} still has a ${active.phase} session of ${active.migration}; cancel it first`);
  };
  if (!req.stop) {
    idle();
    await ctx.journal.release(device, req.migration);
    return { status: 200, body: { released: true } };
  }
  // A source whose state now runs on its target: STOP, then a reset (no copy of the workload's state
  // stays where another workload may read it), then released and free, with the answer (its arcs)
  // in the release's own journal write. Nothing is journaled before: STOP is no runner, the target
  // runs the state, and a replay walks from wherever the device is.
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    idle();
    const now = await d.device.getState();
    const r = now === 'STOP' ? { arcs: [], state: now } : await d.device.setState('STOP');
    if (r.error) return arcsReply(r);
    await d.device.reset();
    const occupancy = freed('SourceReleased', req.migration);
    return { ...arcsReply({ ...r, state: await d.device.getState() }, { released: true, reset: true, occupancy }), release: true, occupancy };
  }));
}

export async function deviceView(ctx: AgentContext, name: string): Promise<DeviceView> {
  const d = deviceOf(ctx, name);
  const e = ctx.journal.get(name);
  const state = await d.device.getState();
  const occupancy = occupancyOf(ctx, name);
  return {
    name, kind: d.kind, flags: flagNames(d.flags), state,
    ...(e.migration ? { migration: e.migration } : {}), ...(e.role ? { role: e.role } : {}), ...(e.step ? { step: e.step } : {}),
    ...(occupancy ? { occupancy } : {}),
  };
}

/**
 * The migration's sessions on this node. With `waitMs`, a long poll: the answer waits until every
 * send session still streaming has ended (verified or failed) or `waitMs` passed, so a controller
 * sees the verdict the moment it is known instead of at its next look.
 */
export async function migrationView(ctx: AgentContext, migration: string, waitMs = 0): Promise<{ sessions: SessionView[] }> {
  const pending = waitMs > 0 ? ctx.sessions.forMigration(migration).flatMap((s) => (s.role === 'source' && isActive(s) ? [s.ended.promise] : [])) : [];
  if (pending.length) await settleWithin(Promise.allSettled(pending), waitMs);
  const sessions: SessionView[] = [];
  for (const s of ctx.sessions.forMigration(migration)) {
    const view = viewOf(s);
    const d = ctx.devices.get(s.device);
    if (!d || s.role !== 'source' || !isActive(s)) {
      sessions.push(view);
      continue;
    }
    // A driver may not know (or refuse) an estimate at a given moment: the view goes without it.
    const state = await d.device.getState();
    const precopy = state.startsWith('PRE_COPY')
      ? await d.device.precopyInfo().then((p) => ({ initialBytes: Number(p.initialBytes), dirtyBytes: Number(p.dirtyBytes) }), () => undefined)
      : undefined;
    const remaining = await d.device.stopCopySize().then(Number, () => undefined);
    sessions.push({ ...view, ...(precopy ? { precopy } : {}), ...(remaining !== undefined ? { remainingBytes: remaining } : {}) });
  }
  // Devices whose journal names this migration but whose session died with an earlier agent process.
  for (const e of ctx.journal.all()) {
    if (e.migration !== migration || sessions.some((x) => x.device === e.device)) continue;
    if (e.role === 'target' && (await committedHere(ctx, e.device, e.step))) {
      sessions.push({ migration, device: e.device, role: 'target', phase: 'Committed', bytes: 0, peer: '', startedAt: e.updatedAt });
      continue;
    }
    sessions.push({
      migration, device: e.device, role: e.role ?? 'source', phase: 'Interrupted', bytes: 0, peer: '',
      startedAt: e.updatedAt, error: { code: 'Interrupted', message: `the agent restarted at step ${e.step ?? '?'}; the data_fd was lost` },
    });
  }
  return { sessions };
}

/**
 * Cancels migration `m` here. A target device is reset (aborting RESUMING needs a reset) unless it
 * already committed. A source device runs again only when the target cannot be running: the stream
 * had not fully left, or the target agent says it did not commit. Anything else is refused as unknown.
 */
export async function cancel(ctx: AgentContext, migration: string, req: CancelRequest): Promise<Reply> {
  const results = [];
  for (const s of ctx.sessions.forMigration(migration)) {
    const d = deviceOf(ctx, s.device);
    s.abort.abort(new Error(req.reason ?? 'cancelled'));
    if (s.role === 'source') await s.done?.catch(() => undefined);
    results.push(await d.exclusive(async () => {
      if (s.role === 'target') return cancelTarget(ctx, s.device, migration);
      return cancelSource(ctx, s.device, migration);
    }));
    if (isActive(s)) finish(s, 'Cancelled', { code: 'Cancelled', message: req.reason ?? 'cancelled' });
  }
  // A target whose session died with an earlier agent process: its journal and its device's state say
  // whether it committed (then it is the runner, and the cancel is refused), else it is reset as above.
  for (const e of ctx.journal.all()) {
    const d = ctx.devices.get(e.device);
    if (e.migration !== migration || e.role !== 'target' || !d || ctx.sessions.get(migration, e.device) || e.step === 'cancelled') continue;
    results.push(await d.exclusive(() => cancelTarget(ctx, e.device, migration)));
  }
  return { status: 200, body: { migration, devices: results } };
}

/** Whether a target device committed `migration`'s state: by its journal and its device's state. */
async function committedHere(ctx: AgentContext, device: string, step: string | undefined): Promise<boolean> {
  const d = ctx.devices.get(device);
  return d !== undefined && hasCommitted(step, await d.device.getState());
}

async function cancelTarget(ctx: AgentContext, device: string, migration: string) {
  const s = ctx.sessions.get(migration, device);
  const d = deviceOf(ctx, device);
  if (s?.phase === 'Committed' || (await committedHere(ctx, device, ctx.journal.get(device).step))) {
    throw new AgentError(409, 'AlreadyCommitted', `device ${device} already committed migration ${migration}; it is the runner now`);
  }
  // On record before the reset: a verified target found RUNNING would otherwise read as committed.
  await ctx.journal.step(device, { step: 'cancel:reset' });
  await d.device.reset();
  // A verified session is no longer active, but it must not stay Verified: a commit queued behind this
  // cancel (an armed one, or the controller's) would walk the reset, empty device to STOP and RUNNING.
  if (s?.role === 'target') finish(s, 'Cancelled', { code: 'Cancelled', message: 'the migration was cancelled on this node; the device was reset' });
  // It was free before it received (mayReceive), and the reset took what it got: free again.
  await ctx.journal.step(device, { step: 'cancelled', occupancy: freed('RolledBack', migration) });
  return { device, role: 'target', state: await d.device.getState() };
}

async function cancelSource(ctx: AgentContext, device: string, migration: string) {
  const s = ctx.sessions.get(migration, device);
  const d = deviceOf(ctx, device);
  if (s?.role === 'source' && s.allSent) {
    const peer = await peerCommitted(ctx, s.targetEndpoint, s.targetNode, migration);
    if (peer !== false) {
      throw new AgentError(409, 'OutcomeUnknown', `every byte of ${device} reached node ${s.targetNode}` +
        (peer === true ? ', which committed it: the target is the runner' : ', which cannot be asked whether it committed') +
        '; the source stays stopped', { peer });
    }
  }
  const r = await d.device.setState('RUNNING');
  await ctx.journal.step(device, { step: r.error ? 'cancel:failed' : 'cancelled' });
  return { device, role: 'source', state: r.state, arcs: r.arcs, ...(r.error ? { error: { errno: r.error.errno, message: r.error.message } } : {}) };
}

/**
 * true: the target committed; false: it did not; undefined: nobody can say. Only the target node's
 * own agent may answer: another one's "not committed" would run a second copy of the state.
 */
async function peerCommitted(ctx: AgentContext, endpoint: string, node: string, migration: string): Promise<boolean | undefined> {
  const client = new AgentClient(endpoint, ctx.tls, node);
  try {
    const view = await client.migration(migration);
    return view.sessions.some((x) => x.role === 'target' && x.phase === 'Committed');
  } catch {
    return undefined;
  } finally {
    client.close();
  }
}

async function abortSessionsOf(ctx: AgentContext, device: string, why: string): Promise<void> {
  // A verified target session too: no commit may follow the reset.
  const s = ctx.sessions.forDevice(device) ?? ctx.sessions.all().find((x) => x.device === device && x.role === 'target' && x.phase === 'Verified');
  if (!s) return;
  s.abort.abort(new Error(why));
  if (s.role === 'source') await s.done?.catch(() => undefined);
  finish(s, 'Cancelled', { code: 'Cancelled', message: why });
}
