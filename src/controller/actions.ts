/**
 * One effect per step: each calls one agent op (idempotent by migration and op id) and turns the
 * answer into an Event for the state machine. Arcs the agents report are returned for the status.
 */
import { createHmac } from 'node:crypto';
import { parseDuration, parseQuantity } from '../api/quantity.js';
import type { ArcRecord } from '../api/types.js';
import { AgentCallError, type AgentClient, type ArcsAnswer } from '../agentapi/client.js';
import { RelayError } from '../relay/errors.js';
import type { DeviceMigration, DeviceNode } from '../kube/kube.js';
import { pastCommit, type Event, type Step } from './machine.js';

export interface Peers {
  readonly source: AgentClient;
  readonly target: AgentClient;
  readonly sourceNode: DeviceNode;
  readonly targetNode: DeviceNode;
}

export interface Outcome {
  readonly event: Event;
  readonly arcs?: ArcRecord[];
  /** Status fields to set with the transition. */
  readonly status?: Record<string, unknown>;
}

/** Tickets are derived, not stored: HMAC(secret, uid) re-derives the same one after a restart. */
export function ticketFor(secret: Buffer, m: DeviceMigration): string {
  return createHmac('sha256', secret).update(`${m.metadata.uid ?? m.metadata.name}/ticket`).digest('base64url');
}

/** Whether a node's published inventory gives `device` the migration flag `flag`. */
const hasFlag = (n: DeviceNode | undefined, device: string, flag: 'P2P' | 'PRE_COPY') =>
  n?.status?.devices?.find((x) => x.name === device)?.flags.includes(flag) ?? false;

export function wantsPrecopy(m: DeviceMigration, node: DeviceNode | undefined, targetNode: DeviceNode | undefined, device: string, targetDevice: string): boolean {
  if (m.spec.strategy === 'StopCopy') return false;
  if (m.spec.strategy === 'PreCopy') return true;
  return hasFlag(node, device, 'PRE_COPY') && hasFlag(targetNode, targetDevice, 'PRE_COPY');
}

const arcsOf = (device: 'source' | 'target', a: { arcs?: ArcsAnswer['arcs'] } | undefined): ArcRecord[] =>
  (a?.arcs ?? []).map((x) => ({ device, ...x }));

/** Calls an agent op; answers become events, arcs included even when the op failed. */
export async function call(device: 'source' | 'target', fn: () => Promise<ArcsAnswer | object>): Promise<Outcome> {
  try {
    const r = await fn();
    return { event: { kind: 'ok' }, arcs: arcsOf(device, r) };
  } catch (e) {
    if (e instanceof AgentCallError) {
      const body = e.body as ArcsAnswer & { error?: { code?: string; message?: string } };
      const arcs = arcsOf(device, body);
      // 5xx and 429 say nothing about the device: the op is asked again.
      if (e.status >= 500 || e.status === 429) return { event: { kind: 'unknown', reason: e.code, message: e.message }, arcs };
      return { event: { kind: 'failed', reason: e.code, message: body.error?.message ?? e.message }, arcs };
    }
    return { event: unreachable(`${device} agent`, e) };
  }
}

/**
 * An agent that could not be asked: the op's outcome is unknown and it is asked again. Either it
 * did not answer, or the peer at its endpoint was refused in the handshake for not being that
 * node's agent (nothing was sent to it): both hold the step until the real agent answers.
 */
function unreachable(who: string, e: unknown): Event {
  const reason = e instanceof RelayError && e.code === 'PeerIdentityMismatch' ? e.code : 'AgentUnreachable';
  return { kind: 'unknown', reason, message: `${who}: ${(e as Error).message}` };
}

/** A member of a DeviceMigrationGroup: how many members there are, and the others as last read. */
export interface GroupContext {
  readonly name: string;
  readonly size: number;
  readonly siblings: DeviceMigration[];
}

export interface StepContext {
  readonly m: DeviceMigration;
  readonly peers: Peers;
  readonly ticket: string;
  readonly targetDevice: string;
  readonly precopy: boolean;
  readonly now: number;
  readonly group?: GroupContext;
}

export async function act(step: Step, c: StepContext): Promise<Outcome> {
  const { m, peers, ticket, targetDevice } = c;
  const name = m.metadata.name;
  const src = m.spec.source.device;
  switch (step) {
    case 'PrepareTarget': {
      // Armed (status.commitOnVerify, recorded before this step): the target runs the Commit step's op
      // itself the moment the stream is verified; the Commit step then reads its answer.
      const o = await call('target', () => peers.target.receive(targetDevice, {
        migration: name, op: 'prepare', ticket, sourceNode: m.spec.source.node,
        ...(m.status?.commitOnVerify ? { commitOnVerify: commitOp(c) } : {}),
      }));
      // A device the controller picked, which its agent says is not free (filled since its DeviceNode
      // was read): nothing ran, so validation picks again. A device the spec named fails as it is.
      if (o.event.kind === 'failed' && o.event.reason === 'DeviceOccupied' && !m.spec.target.device) {
        return { event: { kind: 'repick', message: `target ${m.spec.target.node}/${targetDevice} refused: ${o.event.message}; picking another` } };
      }
      return o;
    }
    case 'StartSend': {
      // A group member stopping from RUNNING first waits until every sibling's source is in RUNNING_P2P.
      const q = c.group && !c.precopy ? await quiesce(c, 'RUNNING_P2P') : undefined;
      if (q?.held) return q.held;
      const bandwidth = m.spec.limits?.bandwidth ? parseQuantity(m.spec.limits.bandwidth) : undefined;
      const o = await call('source', () => peers.source.send(src, {
        migration: name, op: 'send', ticket, precopy: c.precopy, ...(bandwidth ? { bandwidth } : {}),
        target: { node: m.spec.target.node, device: targetDevice, endpoint: peers.targetNode.spec.endpoint },
      }));
      // With STOP_COPY the source stops here: downtime starts when its arc to STOP began.
      return joined(q, c.precopy ? { ...o, status: { precopyStartedAt: new Date(c.now).toISOString() } }
        : { ...o, status: { stopCopyAt: stoppedAt(o.arcs, 'STOP') ?? new Date(c.now).toISOString() } });
    }
    case 'Streaming':
      return observe(c);
    case 'StopCopy': {
      const q = c.group ? await quiesce(c, 'PRE_COPY_P2P') : undefined;
      if (q?.held) return q.held;
      const o = await call('source', () => peers.source.setState(src, { migration: name, op: 'stop-copy', state: 'STOP_COPY' }));
      return joined(q, { ...o, status: { stopCopyAt: stoppedAt(o.arcs, 'STOP_COPY') ?? new Date(c.now).toISOString() } });
    }
    case 'Commit': {
      // A group member commits only once every member's stream is verified (each records Commit then).
      const wait = c.group && barrier(c.group, (x) => pastCommit((x.status?.step ?? 'Pending') as Step), 'their streams verified');
      if (wait) return { event: wait };
      // A group member's target stays in STOP until all committed (ResumeTarget). Alone: the commit
      // gate and at once RUNNING, in one op (every moment between is downtime); a crash replays it
      // (recorded by the agent), and ResumeTarget finds the target's RUNNING arc in the status.
      const o = await call('target', () => peers.target.commit(targetDevice, { migration: name, ...commitOp(c) }));
      // Committed: the op succeeded (an agent that lost its answer in a crash says so from its
      // journal, with no arcs), or its commit arc did and only the run after it failed.
      const committed = o.event.kind === 'ok' || arcInto(o.arcs, 'STOP')?.from === 'RESUMING';
      if (!committed) return o;
      return { ...o, status: { committedAt: new Date(c.now).toISOString(), ...(o.event.kind === 'ok' ? downtime(c, o.arcs) : {}) } };
    }
    case 'ResumeTarget':
      if (c.group) return resumeTogether(c, c.group);
      // The Commit step already ran the target (its arc is recorded): nothing to ask again.
      return arcInto(c.m.status?.arcs, 'RUNNING', 'target') ? { event: { kind: 'ok' } } : resume(c);
    case 'ReleaseSource':
      return release(c);
    case 'RollBack':
      return rollBack(c);
    default:
      return { event: { kind: 'ok' } };
  }
}

/** The Commit step's op: the one an armed target runs on its own, so the two are the same op. */
function commitOp(c: StepContext): { op: string; resume?: boolean } {
  return { op: 'commit', ...(c.group ? {} : { resume: true }) };
}

/** The barrier: every sibling made, and each `ready`; else what this member waits for. */
function barrier(g: GroupContext, ready: (m: DeviceMigration) => boolean, what: string): Event | undefined {
  if (g.siblings.length < g.size - 1) return { kind: 'waiting', message: `waiting for the group's ${g.size} members to be created` };
  const late = g.siblings.filter((x) => !ready(x)).map((x) => x.metadata.name);
  return late.length ? { kind: 'waiting', message: `waiting for ${late.join(', ')} of group ${g.name}: ${what}` } : undefined;
}

/** What quiesce did (arcs, status) and, when the siblings are not there yet, the outcome to hold on. */
interface Quiesced { arcs: ArcRecord[]; status: Record<string, unknown>; held?: Outcome }

/**
 * A group member's source to RUNNING_P2P (or PRE_COPY_P2P) once, recorded as quiescedAt; then the
 * barrier: no device of the group stops before every P2P-capable one has stopped its P2P traffic.
 * A device without P2P has no such state: it is ready to stop as it is.
 */
async function quiesce(c: StepContext, state: 'RUNNING_P2P' | 'PRE_COPY_P2P'): Promise<Quiesced> {
  const out: Quiesced = { arcs: [], status: {} };
  if (!c.m.status?.quiescedAt) {
    if (hasFlag(c.peers.sourceNode, c.m.spec.source.device, 'P2P')) {
      const o = await call('source', () => c.peers.source.setState(c.m.spec.source.device, { migration: c.m.metadata.name, op: 'quiesce', state }));
      if (o.event.kind !== 'ok') return { ...out, held: o };
      out.arcs = o.arcs ?? [];
    }
    out.status = { quiescedAt: new Date(c.now).toISOString() };
  }
  const wait = barrier(c.group!, (x) => Boolean(x.status?.quiescedAt), `sources in ${state}`);
  if (wait) out.held = { event: wait, arcs: out.arcs, status: out.status };
  return out;
}

/** `o`, after what an earlier op of the same step did: its arcs first, its status under o's. */
const joined = (before: { arcs?: ArcRecord[]; status?: Record<string, unknown> } | undefined, o: Outcome): Outcome =>
  before ? { ...o, arcs: [...(before.arcs ?? []), ...(o.arcs ?? [])], status: { ...(before.status ?? {}), ...(o.status ?? {}) } } : o;

/**
 * The reverse of quiesce, for a committed group member: its target to RUNNING_P2P (recorded as
 * targetReadyAt) once every member committed, and to RUNNING once every target is in RUNNING_P2P.
 */
async function resumeTogether(c: StepContext, g: GroupContext): Promise<Outcome> {
  const committed = barrier(g, (x) => Boolean(x.status?.committedAt), 'their targets committed');
  if (committed) return { event: committed };
  let early: Outcome = { event: { kind: 'ok' } };
  if (!c.m.status?.targetReadyAt) {
    if (hasFlag(c.peers.targetNode, c.targetDevice, 'P2P')) {
      early = await call('target', () => c.peers.target.setState(c.targetDevice, { migration: c.m.metadata.name, op: 'run-p2p', state: 'RUNNING_P2P' }));
      if (early.event.kind !== 'ok') return early;
    }
    early = { ...early, status: { targetReadyAt: new Date(c.now).toISOString() } };
  }
  const ready = barrier(g, (x) => Boolean(x.status?.targetReadyAt), 'targets in RUNNING_P2P');
  if (ready) return { ...early, event: ready };
  return joined(early, await resume(c));
}

/** Target RUNNING; the downtime runs from the source's stopping arc to the end of this one. */
async function resume(c: StepContext): Promise<Outcome> {
  const o = await call('target', () => c.peers.target.setState(c.targetDevice, { migration: c.m.metadata.name, op: 'run', state: 'RUNNING' }));
  return o.event.kind === 'ok' ? { ...o, status: downtime(c, o.arcs) } : o;
}

/** The downtime: from the source's stopping arc to the end of the target's arc to RUNNING. */
function downtime(c: StepContext, arcs: ArcRecord[] | undefined): { downtimeMs?: number } {
  const stopped = c.m.status?.stopCopyAt;
  const running = arcInto(arcs, 'RUNNING');
  return stopped && running ? { downtimeMs: Date.parse(running.startedAt) + running.durationMs - Date.parse(stopped) } : {};
}

/** The first arc that reached `state` (of `device`'s arcs, when given). */
function arcInto(arcs: ArcRecord[] | undefined, state: string, device?: 'source' | 'target'): ArcRecord | undefined {
  return arcs?.find((a) => a.to === state && a.result === 'Succeeded' && (!device || a.device === device));
}

/** When the source's arc into `state` began: where the device stopped running. */
function stoppedAt(arcs: ArcRecord[] | undefined, state: 'STOP' | 'STOP_COPY'): string | undefined {
  return arcInto(arcs, state)?.startedAt;
}

/** How long one look at a stop-copy stream waits on the agent for the stream's verdict. */
const VERDICT_WAIT_MS = 200;

/** Streaming: read progress from the source; decide PRE_COPY convergence; see the end. */
async function observe(c: StepContext): Promise<Outcome> {
  const name = c.m.metadata.name;
  let view;
  try {
    // Once the source stopped, there is nothing to decide but the verdict: the agent answers as soon
    // as it knows it (a long poll). A PRE_COPY look answers at once: its rate and convergence matter.
    const stopped = !c.precopy || Boolean(c.m.status?.stopCopyAt);
    view = await c.peers.source.migration(name, stopped ? VERDICT_WAIT_MS : 0);
  } catch (e) {
    return { event: unreachable('source agent', e) };
  }
  const s = view.sessions.find((x) => x.role === 'source' && x.device === c.m.spec.source.device);
  if (!s) return { event: { kind: 'failed', reason: 'NoSession', message: 'the source agent has no session for this migration' } };
  const idle = s.precopy !== undefined && s.precopy.initialBytes === 0 && s.precopy.dirtyBytes === 0;
  // Two looks in a row with nothing to send and nothing sent: the device is idle, not between bursts.
  const idleTwice = idle && c.m.status?.transfer?.bytes === s.bytes;
  // Nothing to send now (idle PRE_COPY, or STOP_COPY read to its end and waiting for the verdict).
  const nothingLeft = idle || Boolean(s.allSent) || (s.precopy === undefined && s.remainingBytes === 0);
  const transfer = measure(c, s.bytes, s.remainingBytes, s.digest, nothingLeft);
  if (s.phase === 'Verified') return { event: { kind: 'verified' }, status: { transfer } };
  if (s.phase === 'Failed' || s.phase === 'Cancelled' || s.phase === 'Interrupted') {
    if (s.allSent && (await targetVerified(c))) return { event: { kind: 'verified' }, status: { transfer } };
    return { event: { kind: 'failed', reason: s.error?.code ?? 'StreamFailed', message: s.error?.message ?? `the stream ${s.phase.toLowerCase()}` }, status: { transfer } };
  }
  if (c.precopy && !c.m.status?.stopCopyAt && s.precopy) {
    const d = convergence(c, s.precopy, transfer.rate, idleTwice);
    if (d) return { ...d, status: { transfer, ...(d.status ?? {}) } };
  }
  return { event: { kind: 'streaming' }, status: { transfer } };
}

/**
 * Bytes, the measured rate (a moving average over the controller's looks, so one slow look does not
 * swing it), and the total expected: what was sent plus what the device says is left.
 */
export function measure(c: Pick<StepContext, 'm' | 'now'>, bytes: number, remaining: number | undefined, digest: string | undefined, idle = false) {
  const prev = c.m.status?.transfer;
  const at = new Date(c.now).toISOString();
  let rate = prev?.rate;
  if (prev?.observedAt && bytes >= prev.bytes) {
    const dt = (c.now - Date.parse(prev.observedAt)) / 1000;
    // Too soon to measure; or the device had nothing to send, which is not a slow link; or nothing
    // moved before any rate was measured (a source stalled at the start, e.g. starved of CPU: a first
    // rate of 0 stayed 0 to the end of a transfer of megabytes). The rate stays, and observedAt too,
    // so the next look measures from the same point. Once a rate is known, a look where nothing
    // moved is a stall and pulls it down.
    if (dt < 0.2 || (bytes === prev.bytes && (idle || rate === undefined))) return { ...prev, bytes, ...(digest ? { digest } : {}) };
    const now = (bytes - prev.bytes) / dt;
    rate = Math.round(rate === undefined ? now : 0.5 * rate + 0.5 * now);
  }
  const expected = remaining !== undefined ? bytes + remaining : prev?.expectedBytes;
  return { bytes, observedAt: at, ...(rate !== undefined ? { rate } : {}), ...(expected !== undefined ? { expectedBytes: Math.max(expected, bytes) } : {}), ...(digest ? { digest } : {}) };
}

/** How long a PRE_COPY with nothing to send, and no rate measured, must stay so to count as idle. */
const IDLE_PRECOPY_MS = 1000;

/**
 * PRE_COPY may stop once the initial bytes are out and what STOP_COPY would still send, at the rate
 * measured, fits spec.limits.maxDowntime; or, at spec.precopy.maxDuration, as spec.precopy says:
 * stop anyway, or fail (the source never stopped, it keeps running).
 */
function convergence(c: StepContext, p: { initialBytes: number; dirtyBytes: number }, measured: number | undefined, idle = false): Outcome | undefined {
  const allowedMs = c.m.spec.limits?.maxDowntime ? parseDuration(c.m.spec.limits.maxDowntime) : 300;
  const cap = c.m.spec.limits?.bandwidth ? parseQuantity(c.m.spec.limits.bandwidth) : undefined;
  // Until a rate is measured, the bandwidth cap is the best guess; then the measured rate (never above the cap).
  const rate = measured !== undefined && measured > 0 ? Math.min(measured, cap ?? measured) : cap;
  // Nothing dirty is nothing to send, whatever the rate; but only once a rate was measured, or the
  // device stayed idle a while (looks 20 ms apart can both fall between two dirtying bursts).
  const since = c.m.status?.precopyStartedAt ? Date.parse(c.m.status.precopyStartedAt) : c.now;
  const quiet = idle && c.now - since >= IDLE_PRECOPY_MS;
  const estimate = p.dirtyBytes === 0 && (measured !== undefined || quiet) ? 0 : rate ? Math.round((p.dirtyBytes / rate) * 1000) : undefined;
  if (p.initialBytes === 0 && estimate !== undefined && estimate <= allowedMs) {
    return { event: { kind: 'converged' }, status: { convergence: {
      reason: 'Converged', estimatedDowntimeMs: estimate,
      message: `${p.dirtyBytes} dirty bytes at ${rate ?? 0} B/s: about ${estimate} ms of downtime, within maxDowntime ${allowedMs} ms`,
    } } };
  }
  const policy = { maxDuration: c.m.spec.precopy?.maxDuration ?? '5m', onNoConvergence: c.m.spec.precopy?.onNoConvergence ?? 'StopCopy' };
  if (c.now - since < parseDuration(policy.maxDuration)) return undefined;
  const why = `PRE_COPY did not converge in ${policy.maxDuration}: ${p.initialBytes} initial and ${p.dirtyBytes} dirty bytes left` +
    (estimate !== undefined ? `, about ${estimate} ms of downtime at ${rate} B/s` : ', no rate measured') + `, above maxDowntime ${allowedMs} ms`;
  if (policy.onNoConvergence === 'Fail') {
    return { event: { kind: 'failed', reason: 'NoConvergence', message: `${why}; spec.precopy.onNoConvergence is Fail: rolled back, the source keeps running` } };
  }
  return { event: { kind: 'converged' }, status: { convergence: { reason: 'LimitReached', message: `${why}; stopping anyway (spec.precopy.onNoConvergence: StopCopy)`, ...(estimate !== undefined ? { estimatedDowntimeMs: estimate } : {}) } } };
}

async function targetVerified(c: StepContext): Promise<boolean> {
  try {
    const v = await c.peers.target.migration(c.m.metadata.name);
    return v.sessions.some((x) => x.role === 'target' && (x.phase === 'Verified' || x.phase === 'Committed'));
  } catch {
    return false;
  }
}

/** The source stopped and released (one op), and the target released: the two nodes at once. */
async function release(c: StepContext): Promise<Outcome> {
  const name = c.m.metadata.name;
  const [s, t] = await Promise.all([
    call('source', () => c.peers.source.release(c.m.spec.source.device, { migration: name, op: 'release-stop', stop: true })),
    call('target', () => c.peers.target.release(c.targetDevice, { migration: name, op: 'release' })),
  ]);
  return s.event.kind !== 'ok' ? s : { ...t, arcs: s.arcs ?? [] };
}

/** A device's state, or the reason it cannot be known now (then the rollback is asked again). */
async function peek(client: AgentClient, device: string): Promise<{ migration?: string; state: string } | Outcome> {
  try {
    return await client.device(device);
  } catch (e) {
    return { event: unreachable(`the agent of ${client.node} at ${client.endpoint}`, e) };
  }
}

/** Target reset (aborting RESUMING needs it), source RUNNING again, both released. */
async function rollBack(c: StepContext): Promise<Outcome> {
  const name = c.m.metadata.name;
  const arcs: ArcRecord[] = [];
  // A group member whose target committed but never ran: the commit is taken back first (the agent
  // refuses once the target ran), so the source may run again.
  if (c.group) {
    const u = await call('target', () => c.peers.target.uncommit(c.targetDevice, { migration: name, op: 'uncommit' }));
    const nothingToTakeBack = u.event.kind === 'failed' && u.event.reason === 'NotCommitted';
    if (u.event.kind !== 'ok' && !nothingToTakeBack) return u;
  }
  const t = await call('target', () => c.peers.target.cancel(name, { op: 'cancel' }));
  // An armed target that verified the stream and committed before this reached it: it is the runner.
  if (t.event.kind === 'failed' && t.event.reason === 'AlreadyCommitted') {
    return { event: { kind: 'committed', message: `the target committed on its own verdict before the rollback reached it (${c.m.status?.failure?.reason ?? 'rollback'}: ` +
      `${c.m.status?.failure?.message ?? ''}); it runs the state, so the migration finishes instead` } };
  }
  if (t.event.kind !== 'ok') return t;
  const tv = await peek(c.peers.target, c.targetDevice);
  if ('event' in tv) return tv;
  if (tv.migration === name && tv.state !== 'RUNNING') {
    const r = await call('target', () => c.peers.target.reset(c.targetDevice, { migration: name, op: 'rollback-reset' }));
    if (r.event.kind !== 'ok') return r;
  }
  const s = await call('source', () => c.peers.source.cancel(name, { op: 'cancel' }));
  if (s.event.kind !== 'ok') return s;
  const sv = await peek(c.peers.source, c.m.spec.source.device);
  if ('event' in sv) return sv;
  if (sv.migration === name && sv.state !== 'RUNNING') {
    const r = await call('source', () => c.peers.source.setState(c.m.spec.source.device, { migration: name, op: 'rollback-run', state: 'RUNNING' }));
    arcs.push(...(r.arcs ?? []));
    if (r.event.kind !== 'ok') return { ...r, arcs };
  }
  for (const [client, dev] of [[c.peers.source, c.m.spec.source.device], [c.peers.target, c.targetDevice]] as const) {
    const r = await call('source', () => client.release(dev, { migration: name, op: 'rollback-release' }));
    if (r.event.kind !== 'ok' && r.event.kind !== 'failed') return r;
  }
  return { event: { kind: 'ok' }, arcs };
}
