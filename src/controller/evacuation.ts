/**
 * DeviceEvacuation: move every in-use migratable device off a node, a few at a time.
 *
 * The devices to move are read once from the node's DeviceNode and kept in status. Each gets a
 * DeviceMigration named after the evacuation and the device (so a pass that runs twice, or a
 * controller that restarts, creates nothing twice), labelled with the evacuation rather than owned
 * by it: deleting the evacuation stops new work but never rolls back (through garbage collection
 * and the migrations' finalizers) what is already moving. The controller writes the evacuation's
 * status only, never its spec, so GitOps tools see no drift.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { isFinalPhase, type Condition, type DeviceEvacuationStatus } from '../api/types.js';
import type { DeviceEvacuation, DeviceMigration, DeviceNode, Kube } from '../kube/kube.js';
import { stamped } from './conditions.js';
import { agentReady, inFlight, isFree } from './validate.js';

export const EVACUATION_LABEL = 'devmig.io/evacuation';
const FAILED = new Set(['Failed', 'RolledBack', 'Cancelled']);
/** Evacuation phases after which it starts nothing. */
const DONE = new Set(['Succeeded', 'PartiallyFailed', 'Failed', 'Cancelled']);

export interface EvacuatorDeps {
  readonly kube: Kube;
  readonly log: Logger;
  /** Migrations of all evacuations running at once, cluster-wide. */
  readonly maxParallelTotal: number;
  readonly now?: () => number;
}

type Entry = NonNullable<DeviceEvacuationStatus['devices']>[number];
const isFinal = (m: DeviceMigration) => isFinalPhase(m.status?.phase);

export function migrationName(evacuation: string, device: string): string {
  const plain = `${evacuation}-${device}`;
  if (plain.length <= 253) return plain;
  return `${evacuation.slice(0, 200)}-${createHash('sha256').update(plain).digest('hex').slice(0, 12)}`;
}

/** A label selector as the API's query string: k=v, k in (a,b), k notin (a), k, !k. */
export function selectorString(s: DeviceEvacuation['spec']['targetNodeSelector']): string | undefined {
  if (!s) return undefined;
  const parts = Object.entries(s.matchLabels ?? {}).map(([k, v]) => `${k}=${v}`);
  for (const e of s.matchExpressions ?? []) {
    if (e.operator === 'In') parts.push(`${e.key} in (${(e.values ?? []).join(',')})`);
    else if (e.operator === 'NotIn') parts.push(`${e.key} notin (${(e.values ?? []).join(',')})`);
    else if (e.operator === 'Exists') parts.push(e.key);
    else parts.push(`!${e.key}`);
  }
  return parts.length ? parts.join(',') : undefined;
}

export class Evacuator {
  constructor(private readonly d: EvacuatorDeps) {}

  private now(): number {
    return (this.d.now ?? Date.now)();
  }

  async reconcile(name: string): Promise<{ requeueAfterMs?: number }> {
    const e = await this.d.kube.getEvacuation(name);
    if (!e || e.metadata.deletionTimestamp) return {};
    // Every migration, read once a pass: this evacuation's, all evacuations' (the cluster-wide limit),
    // and every other (the devices they hold or filled are no targets).
    const all = await this.d.kube.listMigrations();
    const evacuating = all.filter((m) => m.metadata.labels?.[EVACUATION_LABEL]);
    const mine = evacuating.filter((m) => m.metadata.labels?.[EVACUATION_LABEL] === name);
    const byDevice = new Map(mine.map((m) => [m.spec.source.device, m]));
    const conditions: Array<Omit<Condition, 'lastTransitionTime'>> = [];

    let wanted = e.status?.devices?.map((x) => x.device);
    const source = await this.d.kube.getDeviceNode(e.spec.node);
    if (!wanted) {
      if (!source || !agentReady(source, this.now())) {
        conditions.push({ type: 'Ready', status: 'False', reason: 'AgentNotReady', message: `spec.node: node ${e.spec.node} has no ready devmig agent (no fresh DeviceNode); waiting for it` });
        return this.write(e, { phase: 'Pending', conditions: this.conds(e, conditions), startedAt: e.status?.startedAt ?? new Date(this.now()).toISOString() }, 2000);
      }
      // What its agent says holds a workload's state or a pod has (not the spare, free ones), able to
      // migrate, and not already moving elsewhere.
      wanted = (source.status?.devices ?? [])
        .filter((x) => !isFree(x) && x.flags.includes('STOP_COPY') && (!x.migration || x.migration.startsWith(`${name}-`)))
        .map((x) => x.name);
    }

    const running = mine.filter((m) => !isFinal(m));
    const waiting = wanted.filter((dev) => !byDevice.has(dev));
    const noTarget: string[] = [];
    if (e.spec.cancel) {
      for (const m of running.filter((x) => !x.spec.cancel)) await this.d.kube.cancelMigration(m.metadata.name);
    } else if (waiting.length) {
      const clusterRunning = evacuating.filter((m) => !isFinal(m)).length;
      let budget = Math.min(e.spec.maxParallel - running.length, this.d.maxParallelTotal - clusterRunning);
      if (budget > 0) {
        const free = await this.freeTargets(e, source, all);
        for (const dev of waiting) {
          if (budget <= 0) break;
          const pick = this.pick(free, source, dev, e.spec.strategy);
          if (!pick) { noTarget.push(dev); continue; }
          const m = migrationName(name, dev);
          await this.d.kube.createMigration({
            metadata: { name: m, labels: { [EVACUATION_LABEL]: name } },
            spec: { source: { node: e.spec.node, device: dev }, target: pick, strategy: e.spec.strategy, ...(e.spec.limits ? { limits: e.spec.limits } : {}) },
          }).catch((err: { code?: number }) => { if (err.code !== 409) throw err; });
          this.d.log.info({ evacuation: name, migration: m, device: dev, target: pick }, 'started a migration');
          budget--;
        }
      }
    }

    const refreshed = noTarget.length || running.length || waiting.length ? await this.d.kube.listMigrations(`${EVACUATION_LABEL}=${name}`) : mine;
    const entries: Entry[] = wanted.map((dev) => {
      const m = refreshed.find((x) => x.spec.source.device === dev);
      if (!m) {
        return { device: dev, phase: e.spec.cancel ? 'NotStarted' : 'Waiting', ...(noTarget.includes(dev) ? { reason: 'NoTarget', message: this.noTargetWhy(e) } : {}) };
      }
      const f = m.status?.failure;
      return {
        device: dev, migration: m.metadata.name, targetNode: m.spec.target.node,
        ...(m.status?.targetDevice ?? m.spec.target.device ? { targetDevice: m.status?.targetDevice ?? m.spec.target.device } : {}),
        phase: m.status?.phase ?? 'Pending', ...(f ? { reason: f.reason, message: f.message } : {}),
      };
    });
    const counts = {
      total: entries.length,
      running: entries.filter((x) => x.migration && !isFinalPhase(x.phase)).length,
      succeeded: entries.filter((x) => x.phase === 'Succeeded').length,
      failed: entries.filter((x) => FAILED.has(x.phase)).length,
      waiting: entries.filter((x) => !x.migration).length,
    };
    const phase = this.phaseOf(e, counts);
    if (noTarget.length) {
      conditions.push({ type: 'TargetsAvailable', status: 'False', reason: 'NoTarget', message: `${noTarget.join(', ')}: ${this.noTargetWhy(e)}` });
    } else {
      conditions.push({ type: 'TargetsAvailable', status: 'True', reason: 'TargetsFound', message: 'every started device found a free compatible target' });
    }
    const done = DONE.has(phase);
    conditions.push({ type: 'Ready', status: phase === 'Succeeded' ? 'True' : 'False', reason: phase,
      message: `${counts.succeeded} of ${counts.total} moved, ${counts.running} moving, ${counts.failed} failed, ${counts.waiting} waiting` });
    const at = new Date(this.now()).toISOString();
    const status: DeviceEvacuationStatus = {
      phase, counts, devices: entries, conditions: this.conds(e, conditions),
      startedAt: e.status?.startedAt ?? at, ...(done ? { finishedAt: e.status?.finishedAt ?? at } : {}),
    };
    return this.write(e, status, done ? undefined : 1000);
  }

  private phaseOf(e: DeviceEvacuation, c: { total: number; running: number; succeeded: number; failed: number; waiting: number }): NonNullable<DeviceEvacuationStatus['phase']> {
    if (e.spec.cancel && c.running === 0) return 'Cancelled';
    if (c.running > 0 || c.waiting > 0) return c.running + c.succeeded + c.failed > 0 ? 'Running' : 'Pending';
    if (c.failed === 0) return 'Succeeded';
    return c.succeeded === 0 ? 'Failed' : 'PartiallyFailed';
  }

  private noTargetWhy(e: DeviceEvacuation): string {
    const sel = selectorString(e.spec.targetNodeSelector);
    return `no ${sel ? `node matching spec.targetNodeSelector (${sel})` : 'other node'} with a ready agent has a free compatible device; waiting (add capacity or widen spec.targetNodeSelector)`;
  }

  /**
   * Per candidate node, its devices no migration holds or is about to take. A node with an
   * evacuation that exists and is not cancelled is no target, even once it succeeded: like a cordon,
   * it holds until the evacuation is deleted (the node's maintenance is over). Otherwise a device
   * moved there by another evacuation would be lost to the maintenance it was drained for.
   */
  private async freeTargets(e: DeviceEvacuation, source: DeviceNode | undefined, all: DeviceMigration[]): Promise<Map<string, DeviceNode>> {
    const [evacuations, nodes, deviceNodes] = await Promise.all([
      this.d.kube.listEvacuations(), this.d.kube.listNodes(selectorString(e.spec.targetNodeSelector)), this.d.kube.listDeviceNodes(),
    ]);
    const cordoned = new Set(evacuations.filter((x) => !x.metadata.deletionTimestamp && !x.spec.cancel).map((x) => x.spec.node));
    const candidates = new Set(nodes.filter((n) => n !== e.spec.node && !cordoned.has(n)));
    const taken = new Set(inFlight(all).keys());
    const out = new Map<string, DeviceNode>();
    for (const dn of deviceNodes) {
      const n = dn.metadata.name;
      if (!candidates.has(n) || !agentReady(dn, this.now())) continue;
      const devices = (dn.status?.devices ?? []).filter((x) => isFree(x) && !x.migration && !taken.has(`${n}/${x.name}`) && x.flags.includes('STOP_COPY')
        && (!source || source.status?.devices?.find((s) => s.kind === x.kind)));
      out.set(n, { ...dn, status: { ...dn.status, devices } });
    }
    return out;
  }

  /** The node with the most free compatible devices (spreading the load), and one of its devices. */
  private pick(free: Map<string, DeviceNode>, source: DeviceNode | undefined, device: string, strategy: string): { node: string; device: string } | undefined {
    const flags = source?.status?.devices?.find((x) => x.name === device)?.flags ?? ['STOP_COPY'];
    const needs = strategy === 'PreCopy' ? ['STOP_COPY', 'PRE_COPY'] : ['STOP_COPY'];
    let best: { node: string; device: string; left: number } | undefined;
    for (const [node, dn] of free) {
      const fits = (dn.status?.devices ?? []).filter((x) => needs.every((f) => x.flags.includes(f as never)) && flags.every((f) => x.flags.includes(f)))
        .sort((a, b) => Number(a.state === 'RUNNING') - Number(b.state === 'RUNNING'));
      if (fits.length && (!best || fits.length > best.left)) best = { node, device: fits[0]!.name, left: fits.length };
    }
    if (!best) return undefined;
    const dn = free.get(best.node)!;
    dn.status = { ...dn.status, devices: (dn.status?.devices ?? []).filter((x) => x.name !== best.device) };
    return { node: best.node, device: best.device };
  }

  private conds(e: DeviceEvacuation, wanted: Array<Omit<Condition, 'lastTransitionTime'>>): Condition[] {
    return stamped(e.status?.conditions, wanted, e.metadata.generation, this.now());
  }

  private async write(e: DeviceEvacuation, status: DeviceEvacuationStatus, requeueAfterMs: number | undefined): Promise<{ requeueAfterMs?: number }> {
    const s = { ...status, observedGeneration: e.metadata.generation };
    const { startedAt: _a, finishedAt: _b, ...cmpNew } = s;
    const { startedAt: _c, finishedAt: _d, ...cmpOld } = e.status ?? {};
    if (JSON.stringify(cmpNew) !== JSON.stringify(cmpOld) || !e.status?.startedAt) await this.d.kube.patchEvacuationStatus(e.metadata.name, s);
    return requeueAfterMs === undefined ? {} : { requeueAfterMs };
  }
}
