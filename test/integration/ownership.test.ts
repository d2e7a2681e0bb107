/**
 * A device that holds a workload's state is never overwritten (DESIGN.md invariant 7), end to end on
 * the local control plane: the reproduction of issue 15 refused with nothing changed, also once every
 * DeviceMigration is deleted and the agents restarted; a DeviceRelease (RBAC apart from migrations,
 * who and when in status and an Event, idempotent) resets the device and frees it.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { API_VERSION } from '../../src/api/names.js';
import { Kube, type DeviceMigration, type DeviceNode, type DeviceRelease } from '../../src/kube/kube.js';
import { AGENT_NODE_FLAGS } from '../../src/agent/config.js';
import { readInstallIdentity, serviceAccountToken, tokenKubeconfig } from '../../src/local/identity.js';
import { simDigest, type SimDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { devmigBin } from '../helpers/cli.js';
import { settled } from '../helpers/faults.js';
import { localCluster } from '../helpers/local.js';

const local = localCluster('ownership', { nodes: 2, devices: 2, stateSize: '4Mi', loopbackPrefix: '127.0.21' });
const simDir = (node: string) => local.simDir(node);
const digest = (node: string, device: string) => simDigest(simDir(node), device);

async function migrate(name: string, spec: Record<string, unknown>): Promise<DeviceMigration> {
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', fieldValidation: 'Strict',
    body: { apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, spec } });
  return settled(local.kube, name, 60_000);
}

async function plugin(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const { pluginMain } = await import('../../src/cli/plugin.js');
  let stdout = '';
  let stderr = '';
  const code = await pluginMain(['--kubeconfig', local.env.kubeconfig, ...args], { out: (t) => { stdout += `${t}\n`; }, err: (t) => { stderr += `${t}\n`; } });
  return { code, stdout, stderr };
}

/** The device as its agent last published it, once `ok` holds. */
async function published(node: string, device: string, ok: (d: NonNullable<NonNullable<DeviceNode['status']>['devices']>[number]) => boolean) {
  return until(`${node}/${device} published`, async () => {
    const d = (await local.kube.getDeviceNode(node))?.status?.devices?.find((x) => x.name === device);
    return d && ok(d) ? d : undefined;
  }, 20_000, 100);
}

/** The reproduction: a named target that holds the first workload's state. Refused, nothing changed. */
async function refusedOnto(name: string, target: string, held: SimDigest): Promise<void> {
  const other = await digest('node-2', 'sim-1');
  const m = await migrate(name, { source: { node: 'node-2', device: 'sim-1' }, target: { node: 'node-2', device: target } });
  expect(m.status).toMatchObject({ phase: 'Failed', failure: { reason: 'DeviceOccupied' } });
  expect(m.status!.failure!.message).toMatch(new RegExp(`^spec.target.device: device ${target} on node-2 holds the state that migration first moved there \\(digest blake3:[0-9a-f]{64}\\) since .*kubectl devmig release node-2/${target}`));
  expect(m.status?.arcs ?? []).toEqual([]);
  expect(await digest('node-2', target)).toEqual(held);
  expect(await digest('node-2', 'sim-1')).toEqual(other);
}

let first: DeviceMigration;
let moved: SimDigest;
let target: string;

it('moves a workload onto a free device; the device then holds it, and its source is reset and free', async () => {
  const before = await digest('node-1', 'sim-0');
  first = await migrate('first', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' } });
  expect(first.status?.phase).toBe('Succeeded');
  target = first.status!.targetDevice!;
  moved = await digest('node-2', target);
  expect(moved.sha256).toBe(before.sha256);
  await published('node-2', target, (d) => d.occupancy?.state === 'Holding');
  expect((await local.kube.getDeviceNode('node-2'))!.status!.devices!.find((d) => d.name === target)!.occupancy)
    .toMatchObject({ state: 'Holding', reason: 'Migrated', migration: 'first', digest: first.status!.transfer!.digest });
  await published('node-1', 'sim-0', (d) => d.occupancy?.reason === 'SourceReleased');
  expect((await digest('node-1', 'sim-0')).sha256).not.toBe(before.sha256);
  const devices = await plugin('devices', 'node-2');
  expect(devices.code).toBe(0);
  expect(devices.stdout).toMatch(/NODE\s+DEVICE\s+KIND\s+FLAGS\s+STATE\s+OCCUPANCY\s+SINCE\s+MIGRATION/);
  expect(devices.stdout).toMatch(new RegExp(`node-2\\s+${target}\\s+simulated\\s+\\S+\\s+RUNNING\\s+Holding first\\s+\\d{4}-`));
  expect(devices.stdout).toMatch(/Free \(Spare\)/);
}, 90_000);

it('refuses a migration onto it by name, with nothing changed; the automatic pick skips it', async () => {
  await refusedOnto('second', target, moved);
  // Unnamed, the target is the free one, never the one that holds the first workload's state.
  const free = target === 'sim-0' ? 'sim-1' : 'sim-0';
  const auto = await migrate('auto', { source: { node: 'node-1', device: 'sim-1' }, target: { node: 'node-2' } });
  expect(auto.status).toMatchObject({ phase: 'Succeeded', targetDevice: free });
  expect(await digest('node-2', target)).toEqual(moved);
  // Now node-2 has no free device: the next one waits, and says why.
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations',
    body: { apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name: 'nowhere' }, spec: { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' } } } });
  const waiting = await until('nowhere waits', async () => {
    const m = await local.kube.getMigration('nowhere');
    return m?.status?.conditions?.find((c) => c.type === 'Blocked' && c.status === 'True');
  });
  expect(waiting).toMatchObject({ reason: 'NoFreeDevice', message: expect.stringMatching(/node node-2 has no free device .*Holding \(Migrated\).*kubectl devmig release/) as unknown });
  await local.kube.custom.deleteClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', name: 'nowhere' });
}, 90_000);

it('still refuses once every DeviceMigration is deleted, and once the agents restarted', async () => {
  await local.kube.custom.deleteCollectionClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations' });
  await until('every DeviceMigration gone', async () => (await local.kube.listMigrations()).length === 0, 30_000, 100);
  await refusedOnto('third', target, moved);
  for (const a of local.env.agents) {
    process.kill(a.pid, 'SIGTERM');
    await until(`agent ${a.node} gone`, async () => { try { process.kill(a.pid, 0); return false; } catch { return true; } }, 30_000, 100);
    const log = openSync(join(local.env.dir, 'logs', `agent-${a.node}.log`), 'a');
    const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, devmigBin, 'agent', '--config', join(local.env.dir, a.node, 'agent.json')], { detached: true, stdio: ['ignore', log, log] });
    closeSync(log);
    child.unref();
    (a as { pid: number }).pid = child.pid!;
  }
  // local down stops the agents local.json names: these, not the ones that went.
  await writeFile(join(local.env.dir, 'local.json'), JSON.stringify(local.env, null, 2));
  await published('node-2', target, (d) => d.occupancy?.migration === 'first');
  await until('agents ready', async () => (await local.kube.listDeviceNodes()).every((n) => n.status?.ready), 30_000, 200);
  await refusedOnto('fourth', target, moved);
}, 120_000);

it('a DeviceRelease resets the device and frees it, records who and when, once; then it receives', async () => {
  const r = await plugin('release', `node-2/${target}`, '--name', 'free-it', '--wait', '-o', 'json');
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const rel = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as DeviceRelease;
  const me = (await local.kube.config.makeApiClient(k8s.AuthenticationV1Api).createSelfSubjectReview({ body: {} })).status!.userInfo!.username!;
  expect(rel.spec).toEqual({ node: 'node-2', device: target, requestedBy: me });
  expect(rel.status).toMatchObject({
    phase: 'Released', releasedBy: me, releasedAt: expect.stringMatching(/^\d{4}-/) as unknown,
    previous: { state: 'Holding', reason: 'Migrated', migration: 'first', digest: first.status!.transfer!.digest },
  });
  expect(rel.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', reason: 'Released',
    message: expect.stringMatching(new RegExp(`node-2/${target} was reset and is free to receive; before, it holds the state that migration first moved there .*Released by ${me}`)) as unknown });
  const after = await digest('node-2', target);
  expect(after.sha256).not.toBe(moved.sha256);
  await published('node-2', target, (d) => d.occupancy?.reason === 'Released');
  const events = await local.kube.core.listNamespacedEvent({ namespace: 'default', fieldSelector: 'involvedObject.kind=DeviceRelease,involvedObject.name=free-it' });
  expect(events.items.map((e) => [e.type, e.reason])).toEqual([['Normal', 'Released']]);

  // Idempotent: applying the same object again changes nothing, resets nothing.
  await local.kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicereleases', name: 'free-it', fieldManager: 'gitops', force: true,
    body: { apiVersion: API_VERSION, kind: 'DeviceRelease', metadata: { name: 'free-it' }, spec: rel.spec } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.ServerSideApply));
  await new Promise((res) => setTimeout(res, 1500));
  expect((await local.kube.getRelease('free-it'))!.status).toEqual(rel.status);
  expect(await digest('node-2', target)).toEqual(after);

  // Free: it receives a workload's state again.
  const want = await digest('node-2', 'sim-1');
  const fifth = await migrate('fifth', { source: { node: 'node-2', device: 'sim-1' }, target: { node: 'node-2', device: target } });
  expect(fifth.status?.phase).toBe('Succeeded');
  expect((await digest('node-2', target)).sha256).toBe(want.sha256);
}, 120_000);

it('a rolled-back target is reset and free again; its source runs its state', async () => {
  const free = (await local.kube.getDeviceNode('node-1'))!.status!.devices!.find((d) => d.occupancy?.state === 'Free')!.name;
  const src = await digest('node-2', target);
  const name = 'rolled-back';
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-2', device: target }, target: { node: 'node-1', device: free }, strategy: 'StopCopy', limits: { bandwidth: '512Ki' } } } });
  await until(`${name} streams`, async () => ((await local.kube.getMigration(name))?.status?.transfer?.bytes ?? 0) > 0, 30_000, 50);
  await local.kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', name, body: { spec: { cancel: true } } },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  const m = await settled(local.kube, name, 60_000);
  expect(m.status?.phase).toBe('Cancelled');
  expect(await digest('node-2', target)).toMatchObject({ state: 'RUNNING', sha256: src.sha256 });
  const t = await published('node-1', free, (d) => d.occupancy?.reason === 'RolledBack');
  expect(t.occupancy).toMatchObject({ state: 'Free', migration: name });
  expect((await digest('node-1', free)).state).toBe('RUNNING');
}, 90_000);

describe('a DeviceRelease: bad input and who may create one', () => {
  const create = (name: string, spec: Record<string, unknown>, kube: Kube = local.kube) =>
    kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicereleases', fieldValidation: 'Strict',
      body: { apiVersion: API_VERSION, kind: 'DeviceRelease', metadata: { name }, spec } });

  it.each([
    ['an unknown node', { node: 'node-9', device: 'sim-0' }, 'NodeNotFound', /^spec.node: node node-9 does not exist/],
    ['an unknown device', { node: 'node-2', device: 'sim-7' }, 'DeviceNotFound', /^spec.device: node node-2 has no device sim-7 \(it has: sim-0, sim-1\)/],
  ])('fails %s, naming the field', async (_what, spec, reason, why) => {
    const name = `bad-${reason.toLowerCase()}`;
    await create(name, spec);
    const r = await until(`${name} failed`, async () => {
      const x = await local.kube.getRelease(name);
      return x?.status?.phase === 'Failed' ? x : undefined;
    });
    expect(r.status?.failure).toMatchObject({ reason, message: expect.stringMatching(why) as unknown });
  }, 30_000);

  it.each([
    ['a missing device', { node: 'node-2' }, /spec.device/],
    ['an unknown field', { node: 'node-2', device: 'sim-0', force: true }, /unknown field .*spec.force/],
    ['a bad node name', { node: 'Node_2', device: 'sim-0' }, /spec.node/],
    ['a requestedBy that is not the creator', { node: 'node-2', device: 'sim-0', requestedBy: 'someone-else' }, /spec.requestedBy: \\+"someone-else\\+" is not you \(devmig-admin\): leave it out/],
  ])('the API server refuses %s', async (_what, spec, why) => {
    await expect(create(`bad-${Math.random().toString(36).slice(2, 8)}`, spec)).rejects.toMatchObject({ body: expect.stringMatching(why) as unknown });
  });

  it('spec is immutable', async () => {
    await create('immutable-release', { node: 'node-9', device: 'sim-0' });
    await expect(local.kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicereleases', name: 'immutable-release',
      body: { spec: { device: 'sim-1' } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch)))
      .rejects.toMatchObject({ body: expect.stringMatching(/spec is immutable: a DeviceRelease acts once/) as unknown });
  });

  it('the chart\'s roles keep migrating and releasing apart', async () => {
    const id = await readInstallIdentity();
    const role = (suffix: string) => id.objects.find((o) => o.kind === 'ClusterRole' && o.metadata.name.endsWith(`-${suffix}`))!.metadata.name;
    const as = async (suffix: string) => {
      const sa = `user-${suffix}`;
      await local.kube.core.createNamespacedServiceAccount({ namespace: 'default', body: { metadata: { name: sa } } });
      await local.kube.custom.createClusterCustomObject({ group: 'rbac.authorization.k8s.io', version: 'v1', plural: 'clusterrolebindings', body: {
        apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: sa },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role(suffix) },
        subjects: [{ kind: 'ServiceAccount', name: sa, namespace: 'default' }] } });
      const token = await serviceAccountToken(local.kube, 'default', sa);
      return Kube.fromFile(await tokenKubeconfig(local.kube, token, sa, join(local.env.dir, `${sa}.kubeconfig`)));
    };
    const migrator = await as('migrator');
    const releaser = await as('releaser');
    await expect(create('by-migrator', { node: 'node-9', device: 'sim-0' }, migrator)).rejects.toMatchObject({ code: 403 });
    await expect(create('by-releaser', { node: 'node-9', device: 'sim-0' }, releaser)).resolves.toBeDefined();
    await expect(releaser.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations',
      body: { apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name: 'by-releaser' }, spec: { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' } } } }))
      .rejects.toMatchObject({ code: 403 });
  }, 30_000);
});
