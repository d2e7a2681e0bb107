/**
 * Reconciling one DeviceMigration: read it, guard clauses, validate once, then one step of the state
 * machine per pass: record the step (the write-ahead log), act, record the result. Status is patched
 * only when it changed, with the field manager "devmig".
 */
import type { Logger } from 'pino';
import { parseDuration } from '../api/quantity.js';
import { deviceMigrationSpec, isFinalPhase, type ArcRecord, type Condition, type DeviceMigrationStatus } from '../api/types.js';
import { AgentClient } from '../agentapi/client.js';
import type { TlsMaterial } from '../relay/h2.js';
import { act, ticketFor, wantsPrecopy, type GroupContext, type Peers } from './actions.js';
import { GROUP_LABEL } from './group.js';
import type { DeviceMigration, DeviceNode, Kube } from '../kube/kube.js';
import { isTerminal, next, pastCommit, phaseOf, type Event, type Step, type Transition } from './machine.js';
import type { Metrics } from './metrics.js';
import { validate, type ValidationReads } from './validate.js';
import { endpointReads, foreignEndpoint, type EndpointReads } from './endpoints.js';

export const FINALIZER = 'devmig.io/rollback';
const POLL_MS = 20;
/** A group member at a barrier looks at its siblings this often. */
const BARRIER_POLL_MS = 50;
const NODE_CACHE_MS = 5000;
const ENDPOINT_CACHE_MS = 60_000;
const MAX_ARCS = 200;

export interface ReconcilerDeps {
  readonly kube: Kube;
  /** Where agents run as pods (namespace, ServiceAccount): their pod IPs are endpoints of their node too. */
  readonly agentPods?: { namespace: string; serviceAccount: string };
  readonly tls: TlsMaterial;
  readonly ticketSecret: Buffer;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly now?: () => number;
  /** The migration as the controller's watch last delivered it, if it has one. */
  readonly watched?: (name: string) => DeviceMigration | undefined;
}

type Status = DeviceMigrationStatus;
interface Pass {
  peers?: Peers;
  /** The finalizer being added: awaited before the first agent op. */
  finalizing?: Promise<void>;
  /** Status moved on in memory past steps that need no record of their own; written at the next record. */
  unsaved: boolean;
  /** A record written behind (see apply), awaited before the next write and at the end of the pass. */
  writing?: Promise<void>;
  /** Events to create once the pass is over: off the path of the steps (the status is the record). */
  events: Array<{ type: 'Normal' | 'Warning'; reason: string; message: string }>;
}
interface Applied { moved: boolean; requeueAfterMs?: number }
/**
 * Forward moves not written on their own (see apply): the source stopping is undone by a rollback
 * whatever the record says, and after Commit nothing can go back. Nor is Commit, when the target is
 * armed (status.commitOnVerify, the commit's intent, recorded before it was prepared): the Commit
 * step's op only reads what the target did, and a rollback asks the target before it acts.
 */
const UNRECORDED: ReadonlySet<string> = new Set(['PrepareTarget>StartSend', 'StartSend>Streaming', 'ResumeTarget>ReleaseSource']);
/** Records of what already happened, written while the next step goes on: the target runs (committedAt, downtime). */
const BEHIND: ReadonlySet<string> = new Set(['Commit>ResumeTarget']);
/** A pass stops after this many steps and queues the key again, so one object cannot hog a worker. */
const MAX_STEPS_PER_PASS = 12;
/** Reasons that say an agent is not who it should be: a Warning each, and its node read afresh. */
const UNTRUSTED: ReadonlySet<string> = new Set(['PeerIdentityMismatch', 'ForeignEndpoint']);

/** The stages a person follows; each becomes a condition once passed. */
const STAGES: Array<{ type: string; after: Step; message: string }> = [
  { type: 'Validated', after: 'Pending', message: 'nodes, agents and devices checked; the target device is chosen' },
  { type: 'TargetPrepared', after: 'PrepareTarget', message: 'the target device is RESUMING and waits for the stream' },
  { type: 'StreamVerified', after: 'Streaming', message: 'every byte arrived; count and digest matched' },
  { type: 'Committed', after: 'Commit', message: 'the target accepted the state (RESUMING -> STOP) and runs it' },
  { type: 'SourceReleased', after: 'ReleaseSource', message: 'the source device is stopped and released' },
];
const ORDER: Step[] = ['Pending', 'PrepareTarget', 'StartSend', 'Streaming', 'StopCopy', 'Commit', 'ResumeTarget', 'ReleaseSource', 'Succeeded'];
const stepOrder = (s: Step): number => ORDER.indexOf(s);

/** A cancel (or a deletion) that came once the target may run: refused, and said so. */
const tooLateToCancel = (m: DeviceMigration, step: Step): boolean => Boolean(m.spec.cancel || m.metadata.deletionTimestamp) && pastCommit(step);
const TOO_LATE_TO_CANCEL = { type: 'Cancelled', status: 'False', reason: 'TooLateToCancel',
  message: 'the cancel came after the commit: the target may already run the state, so the migration finishes instead of rolling back' } as const;

/** A replayed op answers with arcs already recorded (or lost with a crashed pass): each is kept once. */
function appendArcs(have: ArcRecord[], more: ArcRecord[]): ArcRecord[] {
  const key = (a: ArcRecord) => `${a.device}/${a.from}/${a.to}/${a.startedAt}`;
  const seen = new Set(have.map(key));
  return [...have, ...more.filter((a) => !seen.has(key(a)))].slice(-MAX_ARCS);
}

/**
 * Percent of the expected bytes moved, and never less than before: while PRE_COPY runs the workload
 * dirties pages and the expected total grows, but a person watching must not see progress go back.
 * Below 100% until the target runs; 100% once it does.
 */
export function progressOf(previous: string | undefined, s: DeviceMigrationStatus, step: Step): string | undefined {
  const before = previous ? Number.parseInt(previous, 10) : 0;
  if (step === 'Succeeded') return '100%';
  const t = s.transfer;
  const now = t?.expectedBytes ? Math.min(99, Math.floor((t.bytes / t.expectedBytes) * 100)) : 0;
  const p = Math.max(before, now);
  return p > 0 || previous ? `${p}%` : undefined;
}

export class Reconciler {
  private readonly clients = new Map<string, AgentClient>();
  /** Per migration, the resourceVersion of the last write of ours: its watch event brings nothing new. */
  private readonly written = new Map<string, string>();
  private readonly addresses: EndpointReads;
  constructor(private readonly d: ReconcilerDeps) {
    this.addresses = endpointReads(d.kube, d.agentPods);
  }

  private now(): number {
    return (this.d.now ?? Date.now)();
  }

  /** Whether this version of the migration is one this reconciler wrote (a watch need not wake it). */
  isOwnWrite(name: string, resourceVersion: string | undefined): boolean {
    return resourceVersion !== undefined && this.written.get(name) === resourceVersion;
  }

  forget(name: string): void {
    this.written.delete(name);
  }

  private wrote(name: string, resourceVersion: string | undefined): void {
    if (resourceVersion) this.written.set(name, resourceVersion);
  }

  /**
   * The migration to act on: what the watch delivered when that is known to be current with our own
   * writes (a new object nobody wrote status to yet, or the very version we wrote last), else a read.
   * Either can be a few milliseconds behind a user's change; that change's own event comes next.
   */
  private async read(name: string): Promise<DeviceMigration | undefined> {
    const w = this.d.watched?.(name);
    const current = w && (w.status?.step === undefined ? !this.written.has(name) : this.isOwnWrite(name, w.metadata.resourceVersion));
    return current ? structuredClone(w) : this.d.kube.getMigration(name);
  }

  async reconcile(name: string): Promise<{ requeueAfterMs?: number }> {
    const m = await this.read(name);
    if (!m) return {};
    const deleting = Boolean(m.metadata.deletionTimestamp);
    if (isTerminal((m.status?.step ?? 'Pending') as Step)) return this.finish(m, deleting);
    // Steps follow one another in one pass while they move forward: the object each status patch
    // returns is as fresh as a new read, and the DeviceNodes are read once. The finalizer goes on
    // while the first step validates; no agent op runs before it is there.
    const pass: Pass = { unsaved: false, events: [] };
    if (!deleting && !(m.metadata.finalizers ?? []).includes(FINALIZER)) {
      pass.finalizing = this.d.kube.setFinalizers(name, [...(m.metadata.finalizers ?? []), FINALIZER]).then((rv) => this.wrote(name, rv));
      pass.finalizing.catch(() => undefined);
    }
    try {
      for (let i = 0; i < MAX_STEPS_PER_PASS; i++) {
        const status: Status = { ...(m.status ?? {}) };
        const step = (status.step ?? 'Pending') as Step;
        if (isTerminal(step)) return {};
        const r = await this.one(m, status, step, deleting, pass);
        if (!r.moved) return { requeueAfterMs: r.requeueAfterMs };
      }
      await this.save(m, m.status ?? {}, pass);
      return { requeueAfterMs: 0 };
    } finally {
      this.tell(m, pass.events);
      await pass.writing;
      await pass.finalizing;
    }
  }

  /** Events are told, not waited for: an Event that could not be created is logged. */
  private tell(m: DeviceMigration, events: Pass['events']): void {
    for (const e of events) {
      this.d.kube.event(m, e.type, e.reason, e.message)
        .catch((err: unknown) => this.d.log.warn({ migration: m.metadata.name, err: (err as Error).message, reason: e.reason }, 'could not create an Event'));
    }
  }

  private async one(m: DeviceMigration, status: Status, step: Step, deleting: boolean, pass: Pass): Promise<Applied> {
    const stop = this.stopEvent(m, status, step, deleting);
    // Past the commit a stop changes nothing: the step goes on (a condition says the cancel came too late).
    const stopped = stop && next(step, stop);
    if (stopped && stopped.step !== step) return this.apply(m, status, step, stopped, [], pass);
    const group = m.spec.group ? await this.groupOf(m) : undefined;
    if (group?.abort) {
      const t = next(step, group.abort);
      if (t.step !== step) return this.apply(m, status, step, t, [], pass);
    }
    if (step === 'Pending') return this.validateStep(m, status, pass);
    return this.runStep(m, status, step, pass, group?.ctx);
  }

  /**
   * A group member's siblings, read fresh at each step (the barriers depend on them), or the event
   * that rolls it back with them: a sibling that failed while this member's target has not run.
   */
  private async groupOf(m: DeviceMigration): Promise<{ ctx: GroupContext; abort?: Event }> {
    const name = m.spec.group!;
    const [g, members] = await Promise.all([this.d.kube.getGroup(name), this.d.kube.listMigrations(`${GROUP_LABEL}=${name}`)]);
    const siblings = members.filter((x) => x.metadata.name !== m.metadata.name);
    const ctx: GroupContext = { name, size: g?.spec.members.length ?? siblings.length + 1, siblings };
    if (m.status?.targetReadyAt) return { ctx };
    if (!g) return { ctx, abort: { kind: 'groupAbort', reason: 'GroupNotFound', message: `spec.group: DeviceMigrationGroup ${name} does not exist; members move only with their group` } };
    // The member that failed first, rather than one that only followed it.
    const failing = siblings.filter((x) => x.status?.step === 'RollBack' || (isFinalPhase(x.status?.phase) && x.status?.phase !== 'Succeeded'));
    const failed = failing.find((x) => x.status?.failure?.reason !== 'GroupRolledBack') ?? failing[0];
    if (!failed) return { ctx };
    const f = failed.status?.failure;
    return { ctx, abort: { kind: 'groupAbort', reason: 'GroupRolledBack',
      message: `member ${failed.metadata.name} of group ${name} ${f ? `failed (${f.reason}: ${f.message})` : 'failed'}; the group rolls back together` } };
  }

  private stopEvent(m: DeviceMigration, status: Status, step: Step, deleting: boolean): Event | undefined {
    if (step === 'RollBack') return undefined;
    if (deleting || m.spec.cancel) return { kind: 'cancel' };
    const timeout = m.spec.limits?.timeout;
    if (timeout && status.startedAt && this.now() - Date.parse(status.startedAt) > parseDuration(timeout)) return { kind: 'timeout' };
    return undefined;
  }

  /** Validations one at a time: each sees the target devices the ones before it chose and recorded. */
  private choosing: Promise<unknown> = Promise.resolve();

  private validateStep(m: DeviceMigration, status: Status, pass: Pass): Promise<Applied> {
    const run = this.choosing.then(() => this.validateNow(m, status, pass));
    this.choosing = run.catch(() => undefined);
    return run;
  }

  private async validateNow(m: DeviceMigration, status: Status, pass: Pass): Promise<Applied> {
    const spec = deviceMigrationSpec.safeParse(m.spec);
    const v = spec.success ? await validate(this.reads, m) : { ok: false as const, reason: 'InvalidSpec', message: spec.error.message };
    if (!v.ok) {
      // What is cached may be what failed: the next try reads both nodes afresh.
      for (const n of [m.spec.source.node, m.spec.target.node]) { this.nodes.delete(n); this.known.delete(n); }
      // A device still held or an agent not yet ready may change by itself: wait, with a condition.
      const ev: Event = v.retry ? { kind: 'unknown', reason: v.reason, message: v.message } : { kind: 'invalid', reason: v.reason, message: v.message };
      return this.apply(m, status, 'Pending', next('Pending', ev), [], pass);
    }
    // Alone, the target commits the moment it has verified the stream (no controller round trip in the
    // downtime): the intent is recorded here, before PrepareTarget arms it. Group members commit together.
    const s: Status = { ...status, targetDevice: v.targetDevice, startedAt: status.startedAt ?? new Date(this.now()).toISOString(), ...(m.spec.group ? {} : { commitOnVerify: true }) };
    return this.apply(m, s, 'Pending', next('Pending', { kind: 'ok' }), [], pass);
  }

  private async runStep(m: DeviceMigration, status: Status, step: Step, pass: Pass, group?: GroupContext): Promise<Applied> {
    await pass.finalizing;
    const peers = pass.peers ?? await this.peers(m);
    if (!('source' in peers)) return this.apply(m, status, step, this.distrust(m, step, peers), [], pass);
    pass.peers = peers;
    const targetDevice = status.targetDevice ?? m.spec.target.device ?? '';
    const precopy = status.precopy ?? wantsPrecopy(m, peers.sourceNode, peers.targetNode, m.spec.source.device, targetDevice);
    const out = await act(step, { m, peers, ticket: ticketFor(this.d.ticketSecret, m), targetDevice, precopy, now: this.now(), ...(group ? { group } : {}) });
    const s: Status = { ...status, precopy, ...(out.status ?? {}) };
    const t = next(step, out.event);
    return this.apply(m, s, step, t.blocked ? this.distrust(m, step, t.blocked, t) : t, out.arcs ?? [], pass);
  }

  /**
   * The step held on `why`. An agent that could not be trusted (its endpoint is not its node's, or
   * the peer there is another agent) is looked up afresh next time: the DeviceNode may have been
   * fixed meanwhile (an agent that came back republishes its own endpoint).
   */
  private distrust(m: DeviceMigration, step: Step, why: { reason: string; message: string }, t: Transition = { step, blocked: why }): Transition {
    if (UNTRUSTED.has(why.reason)) {
      for (const n of [m.spec.source.node, m.spec.target.node]) { this.nodes.delete(n); this.endpoints.delete(n); }
    }
    return t;
  }

  /**
   * Records the transition, then says when to look again. A forward move between steps whose
   * replay is harmless is only kept in memory and written with the next record: the write-ahead
   * records that matter (the target chosen, Commit, the end) are never skipped, and an op replayed
   * after a crash answers as before. That the target runs is written behind: the next step does not
   * wait for it. Group members record every step, in order: their siblings read them.
   */
  private async apply(m: DeviceMigration, status: Status, from: Step, t: Transition, arcs: ArcRecord[], pass: Pass): Promise<Applied> {
    const heldOn = status.conditions?.find((c) => c.type === 'Blocked' && c.status === 'True')?.reason;
    const s = this.statusFor(m, status, t, arcs);
    const plain = !m.spec.group && !t.failure && !t.blocked;
    if (plain && (UNRECORDED.has(`${from}>${t.step}`) || (from === 'Streaming' && t.step === 'Commit' && status.commitOnVerify))) {
      m.status = s;
      pass.unsaved = true;
    } else if (plain && BEHIND.has(`${from}>${t.step}`)) {
      this.saveBehind(m, s, pass);
    } else {
      await this.save(m, s, pass);
    }
    this.report(m, from, t, arcs, pass.events, status.phase);
    // An agent that is not who it should be is told once, as a Warning, when the step is first held on it.
    if (t.blocked && UNTRUSTED.has(t.blocked.reason) && heldOn !== t.blocked.reason) pass.events.push({ type: 'Warning', ...t.blocked });
    // A move back to pick again (a target refused) waits a moment for its agent's DeviceNode to tell.
    if (t.step !== from) return t.waiting ? { moved: false, requeueAfterMs: 500 } : { moved: true };
    return { moved: false, requeueAfterMs: t.blocked ? 1000 : t.waiting ? BARRIER_POLL_MS : POLL_MS };
  }

  private async save(m: DeviceMigration, s: Status, pass: Pass): Promise<void> {
    const behind = pass.writing;
    pass.writing = undefined;
    await behind;
    if (!pass.unsaved && JSON.stringify(s) === JSON.stringify(m.status ?? {})) return;
    m.status = (await this.patchStatus(m.metadata.name, s, m.status)).status;
    pass.unsaved = false;
  }

  /** Starts the write and goes on; a failure surfaces at the next write or the end of the pass. */
  private saveBehind(m: DeviceMigration, s: Status, pass: Pass): void {
    const before = pass.writing ?? Promise.resolve();
    const old = m.status;
    m.status = s;
    pass.unsaved = false;
    pass.writing = before.then(async () => { await this.patchStatus(m.metadata.name, s, old); });
    pass.writing.catch(() => undefined);
  }

  /**
   * Writes the status and remembers the version written (its watch event brings nothing new). A field
   * `s` no longer has is removed (a merge patch keeps what it does not name, unless it is null).
   */
  private async patchStatus(name: string, s: Status, before: Status | undefined): Promise<DeviceMigration> {
    const gone = Object.keys(before ?? {}).filter((k) => !(k in s)).map((k) => [k, null]);
    const updated = await this.d.kube.patchMigrationStatus(name, { ...Object.fromEntries(gone), ...s } as Status);
    this.wrote(name, updated.metadata.resourceVersion);
    return updated;
  }

  private statusFor(m: DeviceMigration, status: Status, t: Transition, arcs: ArcRecord[]): Status {
    const precopy = Boolean(status.precopy) && !status.stopCopyAt;
    // A rollback overtaken by the target's commit did not fail: the migration finishes.
    const failure = t.overtaken ? undefined : t.failure ?? status.failure;
    // While rolling back, the phase stays where it was: RolledBack (or Cancelled) is said only once the
    // source runs again; the Ready condition tells that a rollback is under way.
    const phase = t.step === 'RollBack' ? (status.phase ?? 'Pending') : phaseOf(t.step, precopy, failure);
    const s: Status = {
      ...status,
      observedGeneration: m.metadata.generation,
      step: t.step,
      phase,
      arcs: appendArcs(status.arcs ?? [], arcs),
      conditions: this.conditions(m, status.conditions ?? [], t, phase),
    };
    if (failure) s.failure = failure;
    else delete s.failure;
    s.progress = progressOf(m.status?.progress, s, t.step);
    return s;
  }

  private conditions(m: DeviceMigration, old: Condition[], t: Transition, phase: string): Condition[] {
    const now = new Date(this.now()).toISOString();
    const set = (list: Condition[], c: Omit<Condition, 'lastTransitionTime' | 'observedGeneration'>): Condition[] => {
      const prev = list.find((x) => x.type === c.type);
      const same = prev && prev.status === c.status && prev.reason === c.reason && prev.message === c.message;
      const entry: Condition = same ? prev : { ...c, lastTransitionTime: prev && prev.status === c.status ? prev.lastTransitionTime : now };
      return [...list.filter((x) => x.type !== c.type), { ...entry, ...(m.metadata.generation ? { observedGeneration: m.metadata.generation } : {}) }];
    };
    const done = t.step === 'Succeeded';
    const failed = isTerminal(t.step) && !done;
    let list = set(old, {
      type: 'Ready',
      status: done ? 'True' : 'False',
      reason: done ? 'Succeeded' : failed ? (t.failure?.reason ?? 'Failed') : t.step === 'RollBack' ? 'RollingBack' : phase,
      message: done ? 'the target runs the migrated state' : t.failure?.message ?? t.waiting ?? `step ${t.step}`,
    });
    list = set(list, t.blocked
      ? { type: 'Blocked', status: 'True', reason: t.blocked.reason, message: t.blocked.message }
      : { type: 'Blocked', status: 'False', reason: 'Progressing', message: 'nothing is waiting on an unknown outcome' });
    if (tooLateToCancel(m, t.step)) list = set(list, TOO_LATE_TO_CANCEL);
    // One condition per stage, True once the migration is past it.
    for (const stage of STAGES) {
      const reached = stepOrder(t.step) > stepOrder(stage.after) && t.step !== 'RollBack' && !failed;
      const prev = list.find((c) => c.type === stage.type);
      if (!reached && !prev) continue;
      list = set(list, reached
        ? { type: stage.type, status: 'True', reason: stage.type, message: stage.message }
        : { type: stage.type, status: prev?.status ?? 'False', reason: prev?.reason ?? stage.type, message: prev?.message ?? stage.message });
    }
    return list;
  }

  /**
   * Logs every step; tells people (Events) what they see change: the phase, each failed arc, and
   * every step of a rollback or failure, as Warnings.
   */
  private report(m: DeviceMigration, from: Step, t: Transition, arcs: ArcRecord[], events: Pass['events'], phaseBefore: string | undefined): void {
    const log = this.d.log.child({ migration: m.metadata.name });
    const event = (type: 'Normal' | 'Warning', reason: string, message: string) => { events.push({ type, reason, message }); };
    for (const a of arcs.filter((x) => x.result === 'Failed' || x.to === 'ERROR')) {
      this.d.metrics.failedArcs.inc({ device: a.device });
      event('Warning', 'ArcFailed', `${a.device} ${a.from} -> ${a.to} failed: ${a.errno ?? ''} ${a.message ?? ''}`);
    }
    if (t.step === from) return;
    log.info({ from, to: t.step, failure: t.failure }, 'step');
    if (t.overtaken) event('Warning', 'RollbackOvertaken', t.overtaken);
    const warn = t.step === 'RollBack' || t.step === 'Failed' || t.step === 'RolledBack';
    const phase = m.status?.phase;
    if (warn) event('Warning', t.failure?.reason ?? t.step, t.failure?.message ?? `${from} -> ${t.step}`);
    else if (phase && phase !== phaseBefore) event('Normal', phase, `${phaseBefore ?? 'Pending'} -> ${phase} (step ${t.step})`);
    if (isTerminal(t.step)) this.d.metrics.finished(m, t.step);
  }

  private async finish(m: DeviceMigration, deleting: boolean): Promise<{ requeueAfterMs?: number }> {
    if (deleting && (m.metadata.finalizers ?? []).includes(FINALIZER)) {
      await this.d.kube.setFinalizers(m.metadata.name, (m.metadata.finalizers ?? []).filter((f) => f !== FINALIZER));
    }
    return {};
  }

  /** DeviceNodes change rarely (endpoint) and are read often: kept for a few seconds. */
  private readonly nodes = new Map<string, { node: DeviceNode | undefined; at: number }>();
  /** Nodes seen to exist, and when. */
  private readonly known = new Map<string, number>();

  /**
   * Validation's reads: the migrations fresh (they say which devices are taken, and validations one
   * after another must see each other's choices), and the DeviceNodes too (what each device holds
   * changes with every migration and release: a cached one could offer a device that was just
   * filled); Nodes that exist from the cache.
   */
  private readonly reads: ValidationReads = {
    listMigrations: (selector?: string) => this.d.kube.listMigrations(selector),
    getDeviceNode: async (name: string) => {
      const node = await this.d.kube.getDeviceNode(name);
      this.nodes.set(name, { node, at: this.now() });
      return node;
    },
    nodeExists: async (name: string) => {
      const at = this.known.get(name);
      if (at !== undefined && this.now() - at < NODE_CACHE_MS) return true;
      const exists = await this.d.kube.nodeExists(name);
      if (exists) this.known.set(name, this.now());
      return exists;
    },
  };

  private async deviceNode(name: string): Promise<DeviceNode | undefined> {
    const hit = this.nodes.get(name);
    if (hit?.node && this.now() - hit.at < NODE_CACHE_MS) return hit.node;
    const node = await this.d.kube.getDeviceNode(name);
    this.nodes.set(name, { node, at: this.now() });
    return node;
  }

  /**
   * Endpoints found to be their node's, and when. A DeviceNode that names another endpoint is
   * checked at once; the same one again after ENDPOINT_CACHE_MS (a Node's addresses seldom change):
   * under load, a Node read every NODE_CACHE_MS per node was two API requests per migration.
   */
  private readonly endpoints = new Map<string, { endpoint: string; at: number }>();

  /** The two agents, each pinned to its node's identity; or why they cannot be asked. */
  private async peers(m: DeviceMigration): Promise<Peers | { reason: string; message: string }> {
    const { source, target } = m.spec;
    const [sourceNode, targetNode] = await Promise.all([this.deviceNode(source.node), this.deviceNode(target.node)]);
    if (!sourceNode || !targetNode) return { reason: 'AgentUnknown', message: 'the DeviceNode of the source or target node is missing' };
    const [s, t] = await Promise.all([this.agentFor(source.node, sourceNode), this.agentFor(target.node, targetNode)]);
    if (!(s instanceof AgentClient)) return s;
    if (!(t instanceof AgentClient)) return t;
    return { source: s, target: t, sourceNode, targetNode };
  }

  private async foreign(node: string, endpoint: string): Promise<string | undefined> {
    const ok = this.endpoints.get(node);
    if (ok?.endpoint === endpoint && this.now() - ok.at < ENDPOINT_CACHE_MS) return undefined;
    const why = await foreignEndpoint(this.addresses, node, endpoint);
    if (!why) this.endpoints.set(node, { endpoint, at: this.now() });
    return why;
  }

  /**
   * The client of `node`'s agent, whose DeviceNode `n` is (also the DeviceReleases'), or why its
   * endpoint is refused (ForeignEndpoint).
   */
  async agentFor(node: string, n: DeviceNode): Promise<AgentClient | { reason: string; message: string }> {
    const why = await this.foreign(node, n.spec.endpoint);
    return why ? { reason: 'ForeignEndpoint', message: why } : this.client(node, n);
  }

  /**
   * A client for the agent of `node` (the node the migration names, whose DeviceNode this is): the
   * peer at the endpoint must prove that identity. Kept alive per node and endpoint: two nodes that
   * claim one endpoint never share a client.
   */
  private client(node: string, n: DeviceNode): AgentClient {
    const key = `${node} ${n.spec.endpoint}`;
    let c = this.clients.get(key);
    if (!c) {
      c = new AgentClient(n.spec.endpoint, this.d.tls, node, 10_000);
      this.clients.set(key, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
  }
}
