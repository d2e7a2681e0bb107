/**
 * DeviceMigrationGroup on the local control plane: several devices, from two source nodes, move as
 * one. Every source reaches RUNNING_P2P (PRE_COPY_P2P) before any device stops; every target
 * reaches RUNNING_P2P before any runs; a failure anywhere (here a target refusing its commit after
 * others committed) rolls the whole group back, with every source running its own state.
 */
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import type { ArcRecord } from '../../src/api/types.js';
import { GROUP_LABEL } from '../../src/controller/group.js';
import type { DeviceMigration, DeviceMigrationGroup } from '../../src/kube/kube.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { localCluster } from '../helpers/local.js';

const local = localCluster('group', { nodes: 3, devices: 4, stateSize: '4Mi', loopbackPrefix: '127.0.18' });

const simDir = (node: string) => local.simDir(node);
const FINAL = ['Succeeded', 'RolledBack', 'Failed', 'Cancelled'];
type Member = { source: { node: string; device: string }; target: { node: string; device?: string } };

async function create(name: string, spec: Record<string, unknown>): Promise<void> {
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrationgroups', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigrationGroup', metadata: { name }, spec,
  } });
}

async function finished(name: string, ms = 90_000): Promise<{ g: DeviceMigrationGroup; members: DeviceMigration[] }> {
  const deadline = Date.now() + ms;
  for (;;) {
    const g = (await local.kube.custom.getClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrationgroups', name })) as DeviceMigrationGroup;
    const members = await local.kube.listMigrations(`${GROUP_LABEL}=${name}`);
    if (g.status?.finishedAt && members.every((m) => FINAL.includes(m.status?.phase ?? ''))) return { g, members };
    if (Date.now() > deadline) throw new Error(`${name} not finished in ${ms / 1000}s: ${JSON.stringify({ g: g.status, members: members.map((m) => m.status) })}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const end = (a: ArcRecord) => Date.parse(a.startedAt) + a.durationMs;
const start = (a: ArcRecord) => Date.parse(a.startedAt);
const arcs = (ms: DeviceMigration[], device: 'source' | 'target', to: string[]) =>
  ms.flatMap((m) => (m.status?.arcs ?? []).filter((a) => a.device === device && to.includes(a.to) && a.result === 'Succeeded'));

const MEMBERS: Member[] = [
  { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-3', device: 'sim-0' } },
  { source: { node: 'node-1', device: 'sim-1' }, target: { node: 'node-3', device: 'sim-1' } },
  { source: { node: 'node-2', device: 'sim-0' }, target: { node: 'node-3', device: 'sim-2' } },
];

it('moves three devices from two nodes as one: all quiesce before any stops, all are RUNNING_P2P before any runs', async () => {
  const before = await Promise.all(MEMBERS.map((x) => simDigest(simDir(x.source.node), x.source.device)));
  await create('workload-a', { members: MEMBERS, strategy: 'StopCopy' });
  const { g, members } = await finished('workload-a');
  expect(g.status?.phase).toBe('Succeeded');
  expect(g.status?.members?.map((x) => x.phase)).toEqual(['Succeeded', 'Succeeded', 'Succeeded']);
  expect(g.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', message: 'all 3 devices moved; every target runs' });
  expect(g.status?.downtimeMs).toBeGreaterThan(0);
  expect(members).toHaveLength(3);
  for (const m of members) {
    expect(m.spec.group).toBe('workload-a');
    expect((m.metadata as unknown as { ownerReferences: Array<{ kind: string; name: string; controller: boolean }> }).ownerReferences)
      .toEqual([expect.objectContaining({ kind: 'DeviceMigrationGroup', name: 'workload-a', controller: true })]);
  }

  const quiesced = arcs(members, 'source', ['RUNNING_P2P']);
  const stopped = arcs(members, 'source', ['STOP']);
  expect(quiesced).toHaveLength(3);
  expect(stopped.length).toBeGreaterThanOrEqual(3);
  expect(Math.max(...quiesced.map(end))).toBeLessThanOrEqual(Math.min(...stopped.map(start)));
  // (Preparing walks RUNNING -> RUNNING_P2P -> STOP -> RESUMING; resuming starts from STOP.)
  const ready = arcs(members, 'target', ['RUNNING_P2P']).filter((a) => a.from === 'STOP');
  const running = arcs(members, 'target', ['RUNNING']);
  expect(ready).toHaveLength(3);
  expect(running).toHaveLength(3);
  expect(Math.max(...ready.map(end))).toBeLessThanOrEqual(Math.min(...running.map(start)));
  for (const [i, x] of MEMBERS.entries()) {
    expect((await simDigest(simDir(x.target.node), x.target.device!)).sha256).toBe(before[i]!.sha256);
  }
}, 120_000);

it('with PRE_COPY, every source reaches PRE_COPY_P2P before any goes to STOP_COPY', async () => {
  const members: Member[] = [
    { source: { node: 'node-3', device: 'sim-0' }, target: { node: 'node-1', device: 'sim-0' } },
    { source: { node: 'node-3', device: 'sim-1' }, target: { node: 'node-2', device: 'sim-0' } },
  ];
  await create('workload-b', { members, strategy: 'PreCopy', limits: { maxDowntime: '500ms' } });
  const { g, members: ms } = await finished('workload-b');
  expect(g.status?.phase).toBe('Succeeded');
  const quiesced = arcs(ms, 'source', ['PRE_COPY_P2P']);
  const stopCopy = arcs(ms, 'source', ['STOP_COPY']);
  expect(quiesced).toHaveLength(2);
  expect(stopCopy).toHaveLength(2);
  expect(Math.max(...quiesced.map(end))).toBeLessThanOrEqual(Math.min(...stopCopy.map(start)));
}, 120_000);

it('a target that refuses its commit rolls the whole group back, committed members included', async () => {
  const members: Member[] = [
    { source: { node: 'node-1', device: 'sim-2' }, target: { node: 'node-2', device: 'sim-1' } },
    { source: { node: 'node-1', device: 'sim-3' }, target: { node: 'node-2', device: 'sim-2' } },
    { source: { node: 'node-2', device: 'sim-3' }, target: { node: 'node-1', device: 'sim-1' } },
  ];
  const before = await Promise.all(members.map((x) => simDigest(simDir(x.source.node), x.source.device)));
  const fault = join(simDir('node-1'), 'sim-1', 'faults.json');
  // Slow, then failing: the other two commit first, and their commits must be taken back.
  await writeFile(fault, JSON.stringify([{ arc: 'RESUMING>STOP', delayMs: 1500 }, { arc: 'RESUMING>STOP', errno: 'EIO' }]));
  try {
    await create('workload-c', { members, strategy: 'StopCopy' });
    const { g, members: ms } = await finished('workload-c');
    expect(g.status?.phase).toBe('RolledBack');
    expect(g.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'False', reason: 'ArcFailed', message: expect.stringMatching(/^workload-c-2: /) as unknown });
    expect(ms.map((m) => m.status?.phase)).toEqual(['RolledBack', 'RolledBack', 'RolledBack']);
    for (const m of ms.filter((x) => x.metadata.name !== 'workload-c-2')) {
      expect(m.status?.committedAt).toBeDefined();
      expect(arcs([m], 'target', ['STOP']).filter((a) => a.from === 'RESUMING')).toHaveLength(1);
      expect(m.status?.failure).toMatchObject({ reason: 'GroupRolledBack', message: expect.stringMatching(/member workload-c-2 of group workload-c failed \(ArcFailed/) as unknown });
    }
    // No target ever ran; every source runs its own state again.
    expect(arcs(ms, 'target', ['RUNNING', 'RUNNING_P2P']).filter((a) => a.from === 'STOP')).toHaveLength(0);
    for (const [i, x] of members.entries()) {
      expect(await simDigest(simDir(x.source.node), x.source.device)).toMatchObject({ state: 'RUNNING', sha256: before[i]!.sha256 });
    }
  } finally {
    await rm(fault, { force: true });
  }
}, 120_000);

it('cancel rolls every member back; the API server refuses a source listed twice', async () => {
  const members: Member[] = [
    { source: { node: 'node-2', device: 'sim-1' }, target: { node: 'node-3', device: 'sim-3' } },
    { source: { node: 'node-2', device: 'sim-2' }, target: { node: 'node-1', device: 'sim-3' } },
  ];
  const before = await Promise.all(members.map((x) => simDigest(simDir(x.source.node), x.source.device)));
  await create('workload-d', { members, strategy: 'StopCopy', limits: { bandwidth: '256Ki' } });
  const deadline = Date.now() + 30_000;
  while (!(await local.kube.listMigrations(`${GROUP_LABEL}=workload-d`)).some((m) => m.status?.phase === 'StopCopy')) {
    if (Date.now() > deadline) throw new Error('workload-d never streamed');
    await new Promise((r) => setTimeout(r, 50));
  }
  const k8s = await import('@kubernetes/client-node');
  await local.kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrationgroups', name: 'workload-d', body: { spec: { cancel: true } } },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  const { g, members: ms } = await finished('workload-d');
  expect(g.status?.phase).toBe('Cancelled');
  for (const m of ms) expect(['Cancelled', 'RolledBack']).toContain(m.status?.phase);
  for (const [i, x] of members.entries()) {
    expect(await simDigest(simDir(x.source.node), x.source.device)).toMatchObject({ state: 'RUNNING', sha256: before[i]!.sha256 });
  }
  await expect(create('twice', { members: [members[0], { ...members[0], target: { node: 'node-1' } }] })).rejects.toThrow(/a source device may appear once/);
  await expect(create('self', { members: [{ source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-1', device: 'sim-0' } }] }))
    .rejects.toThrow(/each target must differ from its source/);
}, 120_000);

it('two migrations created at once to one node pick two different free devices, never one holding moved state', async () => {
  const make = (name: string, device: string) => local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, spec: { source: { node: 'node-3', device }, target: { node: 'node-2' }, strategy: 'StopCopy' },
  } });
  await Promise.all([make('pair-a', 'sim-2'), make('pair-b', 'sim-3')]);
  const deadline = Date.now() + 60_000;
  let ms: DeviceMigration[] = [];
  while (!(ms.length === 2 && ms.every((m) => FINAL.includes(m.status?.phase ?? '')))) {
    if (Date.now() > deadline) throw new Error(`pair not final: ${JSON.stringify(ms.map((m) => m.status))}`);
    await new Promise((r) => setTimeout(r, 100));
    ms = (await local.kube.listMigrations()).filter((m) => m.metadata.name.startsWith('pair-'));
  }
  expect(ms.map((m) => m.status?.phase)).toEqual(['Succeeded', 'Succeeded']);
  const picked = ms.map((m) => m.status!.targetDevice!);
  expect(new Set(picked).size).toBe(2);
  // node-2/sim-0 runs the state workload-b moved there: not free.
  expect(picked).not.toContain('sim-0');
}, 90_000);
