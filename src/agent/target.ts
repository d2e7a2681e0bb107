/**
 * The target role: prepare a device to receive (-> RESUMING), accept the stream from the one source
 * agent holding the ticket, verify it end to end, and only then commit (RESUMING -> STOP).
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { Wire, algorithmOf, type DigestAlgorithm } from '../relay/digest.js';
import { RelayError } from '../relay/errors.js';
import { receiveStream } from '../relay/receiver.js';
import type { ResumeStream } from '../vfio/device.js';
import { commitRequest, type CommitRequest, type ReceiveRequest } from '../agentapi/types.js';
import { arcsReply, claim, deviceOf, once, type AgentContext, type Reply } from './context.js';
import { AgentError } from './errors.js';
import { describeIdentity, sameTicket, type Identity } from './identity.js';
import { finish, type ReceiveSession } from './sessions.js';
import { freed, holding, mayReceive } from './occupancy.js';

export async function prepareReceive(ctx: AgentContext, device: string, req: ReceiveRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    // Only a free device receives, whatever the controller asked (DESIGN.md invariant 7).
    mayReceive(ctx, device);
    limitSessions(ctx);
    await ctx.journal.step(device, { migration: req.migration, role: 'target', step: 'receive:prepare' });
    const r = await d.device.setState('RESUMING');
    if (r.error || r.stream?.kind !== 'resume') {
      await ctx.journal.step(device, { step: 'receive:failed' });
      return arcsReply(r);
    }
    const session: ReceiveSession = {
      role: 'target', migration: req.migration, device, sourceNode: req.sourceNode, ticket: req.ticket, ticketUsed: false,
      resume: r.stream, phase: 'Waiting', bytes: 0, startedAt: new Date().toISOString(), abort: new AbortController(),
      ...(req.commitOnVerify ? { commitOnVerify: req.commitOnVerify } : {}),
    };
    ctx.sessions.put(session);
    // receive:waiting is durable with the op's answer (one write), so before any stream can come.
    return { ...arcsReply(r), step: 'receive:waiting' };
  }));
}

/** A stream still running after this long gets its receive:streaming step in the journal. */
const STREAMING_NOTE_MS = 200;

/** PUT /v1/migrations/:m/stream: the data path. Everything is checked before a byte reaches a device. */
export async function acceptStream(ctx: AgentContext, who: Identity, migration: string, headers: IncomingHttpHeaders,
  stream: ServerHttp2Stream, trailers: () => IncomingHttpHeaders | undefined): Promise<Reply> {
  const session = admit(ctx, who, migration, headers);
  const algorithm = acceptedDigest(ctx, headers);
  session.ticketUsed = true;
  session.phase = 'Streaming';
  // receive:streaming is what a person reads; a restart treats a stream it lost the same at
  // receive:waiting (interrupted; the commit needs the live session), and both are ARMED steps. So
  // it is written only for a stream still running after STREAMING_NOTE_MS: a short one goes straight
  // to receive:verified, one fsync fewer on a disk the commit's answer waits on. Neither write holds
  // up a byte or the commit.
  const streaming = setTimeout(() => note(ctx, session.device, 'receive:streaming'), STREAMING_NOTE_MS);
  try {
    const got = await receiveStream(stream, session.resume, {
      algorithm, signal: session.abort.signal, trailers, idleMs: ctx.config.timeouts.streamIdle, onProgress: (b) => { session.bytes = b; },
    }).finally(() => clearTimeout(streaming));
    session.digest = got.digest;
    finish(session, 'Verified');
    note(ctx, session.device, 'receive:verified');
    if (session.commitOnVerify) session.committing = commitOnVerify(ctx, session, session.commitOnVerify);
    return { status: 200, body: { verified: true, bytes: got.bytes, digest: got.digest } };
  } catch (e) {
    if (!(e instanceof RelayError)) throw e;
    finish(session, e.code === 'Cancelled' ? 'Cancelled' : 'Failed', { code: e.code, message: e.message });
    await ctx.journal.step(session.device, { step: 'receive:failed' });
    const status = e.code === 'StreamMismatch' ? 422 : 400;
    return { status, body: { verified: false, error: e.code, message: e.message } };
  }
}

/**
 * The commit the controller armed (its intent recorded in status before the target was prepared),
 * run the moment the stream is verified: from the source's stop to the target's run no controller
 * round trip, status write or journal fsync is in the way. It is the very op the controller sends
 * next (same id, same parameters), which then answers what this one did (see once).
 */
function commitOnVerify(ctx: AgentContext, s: ReceiveSession, armed: NonNullable<ReceiveSession['commitOnVerify']>): Promise<unknown> {
  const req = commitRequest.parse({ migration: s.migration, op: armed.op, ...(armed.resume ? { resume: true } : {}) });
  return commit(ctx, s.device, req).catch((e: unknown) =>
    ctx.log.warn({ migration: s.migration, device: s.device, err: (e as Error).message }, 'the armed commit did not run; the controller\'s commit will say why'));
}

function note(ctx: AgentContext, device: string, step: string): void {
  ctx.journal.step(device, { step }).catch((e: unknown) => ctx.log.warn({ device, step, err: (e as Error).message }, 'could not journal a step'));
}

/**
 * The digest the stream carries (unnamed: this agent's own), if this agent accepts it (acceptDigests,
 * by default its own `digest`): the target decides what it trusts, not the source. Refused before
 * any byte is read; the ticket is not spent, so a source with the right digest may still send.
 */
function acceptedDigest(ctx: AgentContext, headers: IncomingHttpHeaders): DigestAlgorithm {
  const accepted = ctx.config.acceptDigests ?? [ctx.config.digest];
  const named = String(headers[Wire.algorithm] ?? ctx.config.digest);
  const algorithm = algorithmOf(`${named}:`);
  if (algorithm && accepted.includes(algorithm)) return algorithm;
  throw new AgentError(422, 'DigestRefused', `the stream's digest "${named}" is not one node ${ctx.config.node} accepts (${accepted.join(', ')}); ` +
    `set the source agent's digest to one of them, or add it to this agent's acceptDigests`);
}

function admit(ctx: AgentContext, who: Identity, migration: string, headers: IncomingHttpHeaders): ReceiveSession & { resume: ResumeStream } {
  const device = String(headers[Wire.device] ?? '');
  const ticket = String(headers[Wire.ticket] ?? '');
  // Who may push at all comes first: only agents send streams, whatever session exists.
  if (who.kind !== 'agent') throw new AgentError(403, 'Forbidden', `only a source node's agent may send a stream, not ${describeIdentity(who)}`);
  const s = ctx.sessions.get(migration, device);
  if (!s || s.role !== 'target') {
    throw new AgentError(403, 'TicketRefused', `no receive session for migration ${migration} on device "${device}": the ticket is not valid here`);
  }
  if (who.node !== s.sourceNode) {
    throw new AgentError(403, 'Forbidden', `only the agent of node ${s.sourceNode} may send migration ${migration}`);
  }
  if (!sameTicket(ticket, s.ticket)) throw new AgentError(403, 'TicketRefused', `wrong ticket for migration ${migration} on ${device}`);
  if (s.ticketUsed) throw new AgentError(403, 'TicketRefused', `the ticket for migration ${migration} on ${device} was already used (replay refused)`);
  return s;
}

/** Journal steps a target reaches only once RESUMING -> STOP succeeded. */
const COMMITTED: ReadonlySet<string> = new Set(['commit:done', 'state:RUNNING_P2P', 'state:RUNNING']);
/**
 * Steps after which the device is RESUMING, and nothing but the commit moves it without journaling
 * first: a cancel or reset journals before it resets the device, the setState op refuses a device in
 * RESUMING, and the commit runs only on a verified stream. So from receive:waiting on, a device found
 * in STOP or later has committed, whether or not receive:verified reached the disk first.
 */
const ARMED: ReadonlySet<string> = new Set(['receive:waiting', 'receive:streaming', 'receive:verified', 'commit:intent']);
/** States an armed target reaches only through RESUMING -> STOP. */
const PAST_COMMIT: ReadonlySet<string> = new Set(['STOP', 'RUNNING_P2P', 'RUNNING']);

/**
 * Whether a target's journal step and its device's state say that RESUMING -> STOP happened. Once the
 * device is RESUMING its own state is the record: only the commit leaves RESUMING for STOP.
 * (A device reset as the agent opened it has its steps marked '>reset': none of them counts.)
 */
export function hasCommitted(step: string | undefined, state: string): boolean {
  return COMMITTED.has(step ?? '') || commitFound(step, state);
}

/** A commit the journal has no step for yet: the device left RESUMING (found past it) while ARMED. */
export function commitFound(step: string | undefined, state: string): boolean {
  return ARMED.has(step ?? '') && PAST_COMMIT.has(state);
}

export async function commit(ctx: AgentContext, device: string, req: CommitRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    // Committed already, and the answer was lost before it was recorded (the agent died in between):
    // the journal says so. Refusing now (no verified session any more) would let the controller roll
    // back a target that may be running. Say it is committed, and run it if that was asked.
    const j = ctx.journal.get(device);
    const state = j.migration === req.migration && j.role === 'target' ? await d.device.getState() : undefined;
    if (state && hasCommitted(j.step, state)) {
      const occupancy = j.occupancy?.state === 'Holding' && j.occupancy.migration === req.migration ? undefined : holding(req.migration, undefined);
      if (!req.resume || state === 'RUNNING') return { status: 200, body: { arcs: [], state, recovered: true }, ...(occupancy ? { occupancy } : {}) };
      return { ...arcsReply(await d.device.setState('RUNNING'), { recovered: true }), step: 'state:RUNNING', ...(occupancy ? { occupancy } : {}) };
    }
    const s = ctx.sessions.get(req.migration, device);
    if (!s || s.role !== 'target' || s.phase !== 'Verified') {
      throw new AgentError(409, 'NotVerified', `refusing RESUMING -> STOP on ${device}: the stream of migration ${req.migration} ` +
        `has not been verified (session ${s ? s.phase : 'missing'})`);
    }
    // The intent on record before the arc is the step the device entered RESUMING with (ARMED): no
    // write stands between the verdict and the arc. Only a journal that says otherwise gets one.
    if (!ARMED.has(ctx.journal.get(device).step ?? '')) await ctx.journal.step(device, { step: 'commit:intent' });
    const r = await d.device.setState('STOP');
    if (r.error) {
      finish(s, 'Failed', { code: 'ArcFailed', message: r.error.message });
      await ctx.journal.step(device, { step: 'commit:failed' });
      return arcsReply(r);
    }
    finish(s, 'Committed');
    // From the commit on the device holds the workload's state: recorded with the op's answer.
    const occupancy = holding(req.migration, s.digest);
    if (!req.resume) return { ...arcsReply(r, { bytes: s.bytes, digest: s.digest }), step: 'commit:done', occupancy };
    // Straight on to RUNNING (every moment here is downtime): a restart in between finds an ARMED
    // step and the device in STOP or later, which says the commit happened (hasCommitted).
    const run = await d.device.setState('RUNNING');
    return { ...arcsReply({ ...run, arcs: [...r.arcs, ...run.arcs] }, { bytes: s.bytes, digest: s.digest }), step: 'state:RUNNING', occupancy };
  }));
}

/**
 * Takes a commit back: only for a device of a group (DeviceMigrationGroup) whose sibling failed,
 * and only while the device never left STOP: it holds the state but never ran it, so after the reset
 * the source is the one runner again. Once it ran (RUNNING_P2P or RUNNING) this is refused.
 */
export async function uncommit(ctx: AgentContext, device: string, req: CommitRequest): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    const s = ctx.sessions.get(req.migration, device);
    if (!s || s.role !== 'target') {
      throw new AgentError(409, 'NotCommitted', `device ${device} has no receive session of migration ${req.migration} to take back`);
    }
    if (s.phase !== 'Committed') return { status: 200, body: { uncommitted: false, phase: s.phase } };
    const state = await d.device.getState();
    if (state !== 'STOP') {
      throw new AgentError(409, 'TargetRan', `device ${device} is ${state}: it ran the state of migration ${req.migration}, which cannot be taken back`);
    }
    await ctx.journal.step(device, { step: 'uncommit:intent' });
    await d.device.reset();
    finish(s, 'Cancelled', { code: 'Uncommitted', message: 'the group this device belongs to rolled back; its commit was taken back before it ran' });
    await ctx.journal.step(device, { step: 'uncommitted', occupancy: freed('RolledBack', req.migration) });
    return { status: 200, body: { uncommitted: true, state: await d.device.getState() } };
  }));
}

function limitSessions(ctx: AgentContext): void {
  if (ctx.sessions.active().length >= ctx.config.maxSessions) {
    throw new AgentError(429, 'TooManySessions', `node ${ctx.config.node} already runs ${ctx.config.maxSessions} sessions (maxSessions); retry later`);
  }
}
export { limitSessions };
