/**
 * The operator on the real kernel: `devmig local up --kernel` (API server and controller on the host,
 * one agent per node in a QEMU guest on real mtty mdevs), migrations through DeviceMigration and
 * DeviceMigrationGroup objects, and each checked by what the device shows: its scratch registers.
 * Run by npm run test:kernel (DEVMIG_LOCAL_KERNEL picks the guest kernel: debian, the default, or cdev).
 */
import { randomBytes } from 'node:crypto';
import type { DeviceMigration } from '../../../src/kube/kube.js';
import type { GuestKernel } from '../../../src/local/guest/artifacts.js';
import { readMarker } from '../../../src/cli/local-kernel.js';
import { planArcs } from '../../../src/vfio/planner.js';
import { MigFlag, type MigStateName } from '../../../src/vfio/uapi.js';
import { localCluster } from '../../helpers/local.js';

const kernel = (process.env.DEVMIG_LOCAL_KERNEL ?? 'debian') as GuestKernel;
// node-1 has a one-port mtty besides its two-port ones: a two-port device's stream does not fit it,
// and the driver itself refuses it.
const local = localCluster('kernel', {
  nodes: 2, devices: 2, stateSize: '0', loopbackPrefix: '127.0.9', kernel,
  kernelDeviceTypes: { 'node-1': ['mtty-2', 'mtty-2', 'mtty-1'], 'node-2': ['mtty-2', 'mtty-2'] },
});
const FINAL = ['Succeeded', 'Failed', 'RolledBack', 'Cancelled'];
const ALL = MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY;
const dev = (node: string, i: number) => local.env.guest!.devices[node]![i]!.name;
const marker = (node: string, device: string, set?: string) => readMarker(local.env.guest!, node, device, set);

async function migrate(name: string, spec: Record<string, unknown>): Promise<DeviceMigration> {
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: 'devmig.io/v1alpha1', kind: 'DeviceMigration', metadata: { name }, spec,
  } });
  return finished(name);
}

async function finished(name: string, ms = 600_000): Promise<DeviceMigration> {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = await local.kube.getMigration(name);
    if (m && FINAL.includes(m.status?.phase ?? '')) return m;
    if (Date.now() > deadline) throw new Error(`${name} not finished in ${ms / 1000} s: ${JSON.stringify(m?.status)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A device's arcs in status: each a single arc of the kernel's table, the walk unbroken. */
function walked(m: DeviceMigration, device: 'source' | 'target'): string[] {
  const arcs = (m.status?.arcs ?? []).filter((a) => a.device === device);
  for (const [i, a] of arcs.entries()) {
    expect(planArcs(a.from as MigStateName, a.to as MigStateName, ALL)).toEqual([{ from: a.from, to: a.to }]);
    if (i > 0 && a.result === 'Succeeded' && arcs[i - 1]!.result === 'Succeeded') expect(a.from).toBe(arcs[i - 1]!.to);
  }
  return arcs.map((a) => `${a.from}>${a.to}${a.result === 'Succeeded' ? '' : `!${a.errno ?? a.result}`}`);
}

it('the agents publish the guest\'s mtty mdevs with the flags the kernel reports', async () => {
  const nodes = await local.kube.listDeviceNodes();
  const devices = Object.fromEntries(nodes.map((n) => [n.metadata.name, (n.status?.devices ?? []).map((d) => [d.name, d.flags.join(','), d.state])]));
  expect(devices).toEqual({
    'node-1': [0, 1, 2].map((i) => [dev('node-1', i), 'STOP_COPY,P2P,PRE_COPY', 'RUNNING']),
    'node-2': [0, 1].map((i) => [dev('node-2', i), 'STOP_COPY,P2P,PRE_COPY', 'RUNNING']),
  });
});

it('StopCopy: node-1 to node-2, the arcs in status as the kernel answered them, the marker intact', async () => {
  const mark = randomBytes(2).toString('hex');
  await marker('node-1', dev('node-1', 0), mark);
  await marker('node-2', dev('node-2', 0), '0000');
  const m = await migrate('k-stopcopy', { source: { node: 'node-1', device: dev('node-1', 0) }, target: { node: 'node-2', device: dev('node-2', 0) }, strategy: 'StopCopy' });
  expect(m.status).toMatchObject({ phase: 'Succeeded', transfer: { bytes: 96 } });
  expect(walked(m, 'source').slice(0, 3)).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY']);
  expect(walked(m, 'target')).toEqual(expect.arrayContaining(['STOP>RESUMING', 'RESUMING>STOP', 'RUNNING_P2P>RUNNING']));
  expect(await marker('node-2', dev('node-2', 0))).toMatchObject({ marker: mark, state: 'RUNNING' });
});

it('PreCopy: node-2 back to node-1 through PRE_COPY and PRE_COPY_P2P, the marker intact', async () => {
  const mark = randomBytes(2).toString('hex');
  await marker('node-2', dev('node-2', 0), mark);
  const m = await migrate('k-precopy', { source: { node: 'node-2', device: dev('node-2', 0) }, target: { node: 'node-1', device: dev('node-1', 1) }, strategy: 'PreCopy' });
  expect(m.status).toMatchObject({ phase: 'Succeeded', transfer: { bytes: 96 } });
  expect(walked(m, 'source')).toEqual(expect.arrayContaining(['RUNNING>PRE_COPY', 'PRE_COPY>PRE_COPY_P2P', 'PRE_COPY_P2P>STOP_COPY']));
  expect(await marker('node-1', dev('node-1', 1))).toMatchObject({ marker: mark, state: 'RUNNING' });
});

it('a DeviceMigrationGroup of two mdevs with P2P: both quiesce in RUNNING_P2P before either stops; both markers intact', async () => {
  const marks = [randomBytes(2).toString('hex'), randomBytes(2).toString('hex')];
  for (const i of [0, 1]) await marker('node-1', dev('node-1', i), marks[i]);
  const members = [0, 1].map((i) => ({ source: { node: 'node-1', device: dev('node-1', i) }, target: { node: 'node-2', device: dev('node-2', i) } }));
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrationgroups', body: {
    apiVersion: 'devmig.io/v1alpha1', kind: 'DeviceMigrationGroup', metadata: { name: 'k-group' }, spec: { members, strategy: 'StopCopy' },
  } });
  const deadline = Date.now() + 600_000;
  let g = await local.kube.getGroup('k-group');
  while (!g?.status?.finishedAt && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    g = await local.kube.getGroup('k-group');
  }
  expect(g?.status?.phase).toBe('Succeeded');
  const ms = await local.kube.listMigrations('devmig.io/group=k-group');
  expect(ms.map((m) => m.status?.phase)).toEqual(['Succeeded', 'Succeeded']);
  const quiesced = ms.map((m) => (m.status?.arcs ?? []).find((a) => a.device === 'source' && a.to === 'RUNNING_P2P')!);
  const stopped = ms.map((m) => (m.status?.arcs ?? []).find((a) => a.device === 'source' && a.to === 'STOP')!);
  expect(Math.max(...quiesced.map((a) => Date.parse(a.startedAt) + a.durationMs))).toBeLessThanOrEqual(Math.min(...stopped.map((a) => Date.parse(a.startedAt))));
  for (const i of [0, 1]) expect(await marker('node-2', dev('node-2', i))).toMatchObject({ marker: marks[i], state: 'RUNNING' });
});

it('a stream the real driver refuses (two ports into a one-port mtty) rolls back: the source RUNNING, its marker intact', async () => {
  const mark = randomBytes(2).toString('hex');
  await marker('node-2', dev('node-2', 0), mark);
  const m = await migrate('k-refused', { source: { node: 'node-2', device: dev('node-2', 0) }, target: { node: 'node-1', device: dev('node-1', 2) }, strategy: 'StopCopy' });
  expect(m.status?.phase).toBe('RolledBack');
  expect(JSON.stringify(m.status?.failure)).toMatch(/ENOMEM|EFAULT|EINVAL/);
  expect(walked(m, 'source')).toEqual(expect.arrayContaining(['STOP>STOP_COPY']));
  expect(await marker('node-2', dev('node-2', 0))).toMatchObject({ marker: mark, state: 'RUNNING' });
  const nodes = await local.kube.listDeviceNodes();
  const target = nodes.find((n) => n.metadata.name === 'node-1')!.status!.devices!.find((d) => d.name === dev('node-1', 2))!;
  expect(target.state).not.toBe('RESUMING'); // the target was reset, not left holding half a stream
});
