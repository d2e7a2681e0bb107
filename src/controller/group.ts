/**
 * DeviceMigrationGroup: several devices of one workload moved as one. The group makes one member
 * DeviceMigration per device (owned by the group, labelled with it, spec.group naming it); the
 * members' reconciler holds each at the group's barriers (see actions.ts: quiesce, the commit
 * barrier, resumeTogether) and rolls all back when one fails before any target runs. This
 * reconciler only creates the members, passes a cancel on, and sums their status up.
 */
import type { Logger } from 'pino';
import { API_VERSION } from '../api/names.js';
import { isFinalPhase, type Condition, type DeviceMigrationGroupStatus } from '../api/types.js';
import { stamped } from './conditions.js';
import type { DeviceMigration, DeviceMigrationGroup, Kube } from '../kube/kube.js';

export const GROUP_LABEL = 'devmig.io/group';

export interface GroupDeps {
  readonly kube: Kube;
  readonly log: Logger;
  readonly now?: () => number;
}

export const memberName = (group: string, index: number): string => `${group.slice(0, 240)}-${index}`;

export class GroupReconciler {
  constructor(private readonly d: GroupDeps) {}

  private now(): number {
    return (this.d.now ?? Date.now)();
  }

  async reconcile(name: string): Promise<{ requeueAfterMs?: number }> {
    const g = await this.d.kube.getGroup(name);
    // Deleting the group deletes its members (owner references); their finalizers roll them back.
    if (!g || g.metadata.deletionTimestamp) return {};
    let members = await this.d.kube.listMigrations(`${GROUP_LABEL}=${name}`);
    const started = members.length > 0;
    if (!g.spec.cancel && !g.status?.finishedAt) {
      for (const [i, want] of g.spec.members.entries()) {
        const m = memberName(name, i);
        if (members.some((x) => x.metadata.name === m)) continue;
        await this.d.kube.createMigration({
          metadata: {
            name: m, labels: { [GROUP_LABEL]: name },
            ownerReferences: [{ apiVersion: API_VERSION, kind: 'DeviceMigrationGroup', name, uid: g.metadata.uid!, controller: true }],
          },
          spec: {
            source: want.source, target: want.target, strategy: g.spec.strategy, group: name,
            ...(g.spec.limits ? { limits: g.spec.limits } : {}), ...(g.spec.precopy ? { precopy: g.spec.precopy } : {}),
          },
        }).catch((err: { code?: number }) => { if (err.code !== 409) throw err; });
      }
      if (!started) this.d.log.info({ group: name, members: g.spec.members.length }, 'created the members of a group');
      members = await this.d.kube.listMigrations(`${GROUP_LABEL}=${name}`);
    }
    if (g.spec.cancel) {
      for (const m of members.filter((x) => !x.spec.cancel && !isFinalPhase(x.status?.phase))) await this.d.kube.cancelMigration(m.metadata.name);
    }
    const status = this.statusOf(g, members);
    return this.write(g, status, status.finishedAt ? undefined : 1000);
  }

  private statusOf(g: DeviceMigrationGroup, members: DeviceMigration[]): DeviceMigrationGroupStatus {
    const rows = g.spec.members.map((want, i) => {
      const m = members.find((x) => x.metadata.name === memberName(g.metadata.name, i));
      const f = m?.status?.failure;
      return {
        migration: memberName(g.metadata.name, i),
        source: `${want.source.node}/${want.source.device}`,
        target: `${want.target.node}/${m?.status?.targetDevice ?? want.target.device ?? '?'}`,
        phase: m?.status?.phase ?? 'Pending',
        ...(f ? { reason: f.reason, message: f.message } : {}),
      };
    });
    const phases = rows.map((r) => r.phase);
    const allFinal = rows.length > 0 && phases.every(isFinalPhase) && members.length === rows.length;
    let phase: NonNullable<DeviceMigrationGroupStatus['phase']>;
    if (phases.every((p) => p === 'Succeeded')) phase = 'Succeeded';
    else if (!allFinal) phase = phases.every((p) => p === 'Pending') ? 'Pending' : 'Running';
    else if (phases.includes('Failed')) phase = 'Failed';
    else if (g.spec.cancel) phase = 'Cancelled';
    else phase = 'RolledBack';
    const at = new Date(this.now()).toISOString();
    const first = rows.find((r) => r.reason && r.reason !== 'GroupRolledBack') ?? rows.find((r) => r.reason);
    const ready: Omit<Condition, 'lastTransitionTime'> = {
      type: 'Ready', status: phase === 'Succeeded' ? 'True' : 'False', reason: phase === 'Running' || phase === 'Pending' ? phase : first?.reason ?? phase,
      message: phase === 'Succeeded' ? `all ${rows.length} devices moved; every target runs`
        : first ? `${first.migration}: ${first.message ?? first.reason}`
          : `${phases.filter((p) => p === 'Succeeded').length} of ${rows.length} done; phases ${[...new Set(phases)].join(', ')}`,
    };
    const downtimeMs = phase === 'Succeeded' ? downtime(members) : undefined;
    return {
      phase, members: rows, conditions: stamped(g.status?.conditions, [ready], g.metadata.generation, this.now()),
      startedAt: g.status?.startedAt ?? at,
      ...(allFinal || phase === 'Succeeded' ? { finishedAt: g.status?.finishedAt ?? at } : {}),
      ...(downtimeMs !== undefined ? { downtimeMs } : {}),
    };
  }

  private async write(g: DeviceMigrationGroup, status: DeviceMigrationGroupStatus, requeueAfterMs: number | undefined): Promise<{ requeueAfterMs?: number }> {
    const s = { ...status, observedGeneration: g.metadata.generation };
    if (JSON.stringify(s) !== JSON.stringify(g.status ?? {})) await this.d.kube.patchGroupStatus(g.metadata.name, s);
    return requeueAfterMs === undefined ? {} : { requeueAfterMs };
  }
}

/** The group's downtime: from the first source stopping to the last target running. */
function downtime(members: DeviceMigration[]): number | undefined {
  const stops = members.map((m) => m.status?.stopCopyAt).filter((x): x is string => Boolean(x)).map(Date.parse);
  const runs = members.flatMap((m) => (m.status?.arcs ?? [])
    .filter((a) => a.device === 'target' && a.to === 'RUNNING' && a.result === 'Succeeded')
    .map((a) => Date.parse(a.startedAt) + a.durationMs));
  if (!stops.length || !runs.length) return undefined;
  return Math.max(...runs) - Math.min(...stops);
}
