/**
 * What every fault scenario checks at its end, and the table each fault test prints: DESIGN.md's
 * invariants on the final state of a migration and its two devices.
 */
import type { DeviceMigration, Kube } from '../../src/kube/kube.js';
import type { SimDigest } from '../../src/vfio/sim/digest.js';
import { until } from './agents.js';

export const FINAL = ['Succeeded', 'RolledBack', 'Failed', 'Cancelled'];

/** Waits for a final phase; a timeout says the status it stalled in (the whole diagnosis). */
export async function settled(kube: Kube, name: string, timeoutMs = 120_000): Promise<DeviceMigration> {
  return until<DeviceMigration>(`${name} final`, async () => {
    const x = await kube.getMigration(name);
    return x?.status?.phase && FINAL.includes(x.status.phase) ? x : undefined;
  }, timeoutMs, 100).catch(async (e: Error) => {
    const x = await kube.getMigration(name);
    const { arcs, ...rest } = x?.status ?? {};
    throw new Error(`${e.message}; status: ${JSON.stringify({ ...rest, lastArcs: (arcs ?? []).slice(-4) })}`);
  });
}

export interface Expect {
  /** The source's state may be lost (it fell into ERROR and only a reset leaves that). */
  readonly sourceMayBeLost?: boolean;
  /** Outcomes this scenario may end in (default: Succeeded or RolledBack). */
  readonly outcomes?: string[];
}

/**
 * Never two runners of the state; Succeeded means the target runs it; otherwise the source runs it
 * unchanged (unless it was lost to ERROR, which status must then say) and status says why.
 * Returns the checks made, for the table.
 */
export function checkInvariants(m: DeviceMigration, before: SimDigest, src: SimDigest, dst: SimDigest, x: Expect = {}): string[] {
  const checks: string[] = [];
  const both = src.state === 'RUNNING' && dst.state === 'RUNNING' && src.sha256 === before.sha256 && dst.sha256 === before.sha256;
  expect(both).toBe(false); checks.push('never two runners');
  expect(x.outcomes ?? ['Succeeded', 'RolledBack']).toContain(m.status?.phase);
  if (m.status?.phase === 'Succeeded') {
    expect(dst).toMatchObject({ state: 'RUNNING', sha256: before.sha256 }); checks.push('target has the state');
    return checks;
  }
  if (x.sourceMayBeLost) {
    expect(m.status?.failure?.message ?? '').toMatch(/ERROR|reset/); checks.push('status says the source state was lost');
  } else {
    expect(src).toMatchObject({ state: 'RUNNING', sha256: before.sha256 }); checks.push('source RUNNING, digest unchanged');
  }
  expect(m.status?.failure?.reason).toBeTruthy(); checks.push('status says why');
  return checks;
}

/**
 * What each device holds afterwards, as its agent publishes it (DESIGN.md invariant 7): Succeeded, the
 * target holds the migration's state and the source was reset and is free (no copy left behind);
 * otherwise the target was reset and is free again, and the source holds what it held.
 */
export async function checkOwnership(kube: Kube, m: DeviceMigration, before: SimDigest, src: SimDigest): Promise<string[]> {
  const { source, target } = m.spec;
  const targetDevice = m.status?.targetDevice ?? target.device;
  const of = async (node: string, device: string | undefined) =>
    (await kube.getDeviceNode(node))?.status?.devices?.find((d) => d.name === device);
  if (m.status?.phase === 'Succeeded') {
    await until(`${m.metadata.name}: the agents publish what the devices hold`, async () =>
      (await of(target.node, targetDevice))?.occupancy?.migration === m.metadata.name && (await of(source.node, source.device))?.occupancy?.reason === 'SourceReleased', 30_000, 200);
    expect((await of(target.node, targetDevice))?.occupancy).toMatchObject({ state: 'Holding', reason: 'Migrated' });
    expect(src.sha256).not.toBe(before.sha256);
    return ['target holds it, source reset and free'];
  }
  if (!targetDevice) return [];
  // A rollback that failed (a source lost to ERROR) leaves both devices claimed by the migration,
  // for a person to look at; the target was reset all the same.
  const released = m.status?.phase !== 'Failed';
  await until(`${m.metadata.name}: the target is published free${released ? ' and idle' : ''}`, async () => {
    const t = await of(target.node, targetDevice);
    return t?.occupancy?.state === 'Free' && (!released || !t.migration);
  }, 30_000, 200);
  expect((await of(source.node, source.device))?.occupancy?.reason).not.toBe('SourceReleased');
  return ['target free, source keeps it'];
}

export function row(name: string, m: DeviceMigration, checks: string[], started: number): string[] {
  return [name, `${m.status?.phase}${m.status?.failure ? ` (${m.status.failure.reason})` : ''}`, checks.join(', '), ((Date.now() - started) / 1000).toFixed(1)];
}

export function table(rows: string[][]): string {
  return `\n${['SCENARIO', 'OUTCOME', 'INVARIANTS', 'SECONDS'].join(' | ')}\n${rows.map((r) => r.join(' | ')).join('\n')}\n`;
}
