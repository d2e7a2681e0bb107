/**
 * devmig as real pods (npm run test:cluster): the image built from the Dockerfile, the Helm chart
 * installed by helm, two kubelet nodes. The blocks run in order on one environment and build on each
 * other (devices that received state are the ones the upgrade must keep; helm uninstall is last).
 * Every device is read from its node's hostPath, never through devmig.
 */
import * as k8s from '@kubernetes/client-node';
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { API_VERSION } from '../../src/api/names.js';
import { inFlight, isFree } from '../../src/controller/validate.js';
import type { DeviceEvacuation, DeviceMigration } from '../../src/kube/kube.js';
import { waitReleaseReady } from '../../src/local/pods/cluster.js';
import { PAUSE_IMAGE } from '../../src/local/pods/images.js';
import { podsNode, SIM_RESOURCE } from '../../src/local/pods/layout.js';
import { kubeletRoot } from '../../src/local/pods/node.js';
import { sh } from '../../src/local/pods/sh.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { settled } from '../helpers/faults.js';
import { chart, ns, podsCluster, release } from '../helpers/pods.js';

const c = podsCluster();
const NODES = ['node-1', 'node-2'];
const devices = () => Array.from({ length: c.state.options.devices }, (_, i) => `sim-${i}`);
/** A bandwidth limit that keeps a stream running long enough to kill something in the middle of it. */
const SLOW = '4Mi';

async function migrate(name: string, source: { node: string; device: string }, target: string, extra: Record<string, unknown> = {}): Promise<void> {
  await c.kube.createMigration({ metadata: { name }, spec: { source, target: { node: target }, ...extra } });
}

/** Until the migration streams: its source stopped or pre-copying, and bytes on the way. */
async function streaming(name: string): Promise<DeviceMigration> {
  return until(`${name} streaming`, async () => {
    const m = await c.kube.getMigration(name);
    const s = m?.status;
    return s && ['PreCopy', 'StopCopy'].includes(s.phase ?? '') && (s.transfer?.bytes ?? 0) > 0 ? m : undefined;
  }, 120_000, 100);
}

async function pods(component: string): Promise<k8s.V1Pod[]> {
  const list = await c.kube.core.listNamespacedPod({ namespace: ns, labelSelector: `app.kubernetes.io/instance=${release},app.kubernetes.io/component=${component}` });
  return list.items.filter((p) => !p.metadata?.deletionTimestamp);
}

/** Every device of every node: its digest and what it says of itself, from the node's disk. */
async function snapshot(): Promise<Map<string, { sha256: string; state: string; resets: number }>> {
  const out = new Map<string, { sha256: string; state: string; resets: number }>();
  for (const node of NODES) {
    for (const d of devices()) {
      const [dig, meta] = await Promise.all([simDigest(c.simDir(node), d), c.device(node, d)]);
      out.set(`${node}/${d}`, { sha256: dig.sha256, state: meta.state, resets: meta.resets });
    }
  }
  return out;
}

/** The devices of `node` its agent says are free (they may receive), and no migration is about to take. */
async function freeDevices(node: string): Promise<string[]> {
  const [dn, all] = await Promise.all([c.kube.getDeviceNode(node), c.kube.listMigrations()]);
  const busy = inFlight(all);
  return (dn?.status?.devices ?? []).filter((d) => isFree(d) && !d.migration && !busy.has(`${node}/${d.name}`)).map((d) => d.name);
}

/** A device that may receive on `node`, or one to play a workload's own state (a spare's is as good as any). */
async function freeDevice(node: string): Promise<string> {
  const [d] = await freeDevices(node);
  if (!d) throw new Error(`no free device on ${node}: ${JSON.stringify((await c.kube.getDeviceNode(node))?.status?.devices)}`);
  return d;
}

const held: { node: string; device: string }[] = [];

describe('migrations between the nodes, checked by digest', () => {
  for (const strategy of ['StopCopy', 'PreCopy'] as const) {
    it(`${strategy}: node-1 -> node-2, the state arrives intact`, async () => {
      const device = await freeDevice('node-1');
      const before = await simDigest(c.simDir('node-1'), device);
      const name = `pods-${strategy.toLowerCase()}`;
      await migrate(name, { node: 'node-1', device }, 'node-2', { strategy });
      const m = await settled(c.kube, name);
      expect(m.status?.phase).toBe('Succeeded');
      const streamedFrom = strategy === 'PreCopy' ? 'PRE_COPY' : 'STOP_COPY';
      expect(m.status?.arcs?.some((a) => a.device === 'source' && a.to === streamedFrom && a.result === 'Succeeded')).toBe(true);
      const after = await simDigest(c.simDir('node-2'), m.status!.targetDevice!);
      expect(after).toMatchObject({ sha256: before.sha256, bytes: before.bytes, state: 'RUNNING' });
      held.push({ node: 'node-2', device: m.status!.targetDevice! });
    }, 180_000);
  }
});

describe('helm upgrade to a new image tag while devices hold migrated state', () => {
  it('rolls the agents onto the new tag; the holder keeps every device open: none is reset, every state stays', async () => {
    expect(held.length).toBeGreaterThan(0);
    const before = await snapshot();
    const agentsBefore = await pods('agent');
    const holdersBefore = await pods('holder');
    const image = c.state.image!;
    const tag = `${image.tag}-upgrade`;
    // A new tag of the image on every node (no registry): the DaemonSet's pod template changes.
    for (const n of c.state.nodes) await sh('ctr', ['--address', n.socket, '-n', 'k8s.io', 'images', 'tag', '--force', image.name, `${image.name.split(':')[0]}:${tag}`]);
    await c.helm('upgrade', release, chart, '--namespace', ns, '--reuse-values', '--set', `image.tag=${tag}`);
    await until('agent pods replaced by ones of the new tag', async () => {
      const now = await pods('agent');
      return now.length === NODES.length && now.every((p) => p.spec?.containers[0]?.image?.endsWith(`:${tag}`) && p.status?.phase === 'Running'
        && !agentsBefore.some((b) => b.metadata?.uid === p.metadata?.uid)) ? now : undefined;
    }, 300_000, 1000);
    await waitReleaseReady(c.kube, NODES, c.state.options.controllerReplicas ?? 2);
    // Real pod restarts: new agent pods; the holders are the same processes as before.
    const holdersAfter = await pods('holder');
    expect(holdersAfter.map((p) => p.metadata?.uid).sort()).toEqual(holdersBefore.map((p) => p.metadata?.uid).sort());
    expect(holdersAfter.every((p) => p.status?.containerStatuses?.every((s) => s.restartCount === 0))).toBe(true);
    const after = await snapshot();
    for (const [dev, b] of before) expect({ dev, ...after.get(dev) }).toEqual({ dev, ...b });
    for (const h of held) expect(after.get(`${h.node}/${h.device}`)?.state).toBe('RUNNING');
  }, 420_000);

  it('a migration after the upgrade succeeds, and moves a state the upgrade kept', async () => {
    const from = held.shift()!;
    const before = await simDigest(c.simDir(from.node), from.device);
    await migrate('pods-after-upgrade', from, 'node-1');
    const m = await settled(c.kube, 'pods-after-upgrade');
    expect(m.status?.phase).toBe('Succeeded');
    expect((await simDigest(c.simDir('node-1'), m.status!.targetDevice!)).sha256).toBe(before.sha256);
    held.push({ node: 'node-1', device: m.status!.targetDevice! });
  }, 180_000);
});

describe('the controller pod deleted mid-migration (--grace-period=0)', () => {
  it('the other replica takes the lease and finishes it', async () => {
    const lease = async () => (await c.kube.coordination.readNamespacedLease({ name: `${release}-controller`, namespace: ns })).spec?.holderIdentity;
    const controllers = (await pods('controller')).map((p) => p.metadata!.name!);
    expect(controllers).toHaveLength(2);
    // The identity is the pod's name (its hostname) and the process id. After the upgrade's rollout
    // the lease may still name a replaced pod until it expires: wait for one of these to lead.
    const leader = await until('a running replica leads', async () => {
      const holder = await lease();
      return controllers.find((n) => holder?.startsWith(`${n}-`)) ? holder : undefined;
    }, 60_000, 500);
    const leaderPod = controllers.find((n) => leader.startsWith(`${n}-`))!;
    const device = await freeDevice('node-1');
    const before = await simDigest(c.simDir('node-1'), device);
    await migrate('pods-leader-killed', { node: 'node-1', device }, 'node-2', { limits: { bandwidth: SLOW } });
    await streaming('pods-leader-killed');
    await c.kubectl('delete', 'pod', '-n', ns, leaderPod, '--grace-period=0', '--force', '--wait=false');
    const m = await settled(c.kube, 'pods-leader-killed', 240_000);
    expect(m.status?.phase).toBe('Succeeded');
    expect((await simDigest(c.simDir('node-2'), m.status!.targetDevice!)).sha256).toBe(before.sha256);
    const now = await lease();
    expect(now).not.toBe(leader);
    expect(now?.startsWith(`${leaderPod}-`)).toBe(false);
    held.push({ node: 'node-2', device: m.status!.targetDevice! });
  }, 300_000);
});

describe('a DeviceEvacuation of node-1', () => {
  it('moves every device in use off node-1 onto node-2, states intact', async () => {
    // What node-1's agent says holds a workload's state: the migration after the upgrade put one there.
    const dn = await c.kube.getDeviceNode('node-1');
    const inUse = (dn?.status?.devices ?? []).filter((d) => !isFree(d) && !d.migration).map((d) => d.name);
    expect(inUse.length).toBeGreaterThan(0);
    // Node-2 must have room for all of them, or the evacuation waits (NoTarget) by design.
    const free = await freeDevices('node-2');
    if (free.length < inUse.length) throw new Error(`node-2 has ${free.length} free devices (${free.join(', ')}) for the ${inUse.length} in use on node-1 (${inUse.join(', ')})`);
    const before = new Map(await Promise.all(inUse.map(async (d) => [d, (await simDigest(c.simDir('node-1'), d)).sha256] as const)));
    await c.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', body: {
      apiVersion: API_VERSION, kind: 'DeviceEvacuation', metadata: { name: 'pods-drain-node-1' }, spec: { node: 'node-1', maxParallel: 2 },
    } });
    const e = await until<DeviceEvacuation>('the evacuation finished', async () => {
      const x = await c.kube.getEvacuation('pods-drain-node-1');
      return x?.status?.finishedAt ? x : undefined;
    }, 240_000, 500);
    expect(e.status?.phase).toBe('Succeeded');
    expect(e.status?.devices?.map((d) => d.device).sort()).toEqual([...inUse].sort());
    for (const d of e.status?.devices ?? []) {
      const m = (await c.kube.getMigration(d.migration!))!;
      expect(m.spec.target.node).toBe('node-2');
      expect((await simDigest(c.simDir('node-2'), m.status!.targetDevice!)).sha256).toBe(before.get(d.device));
    }
    await c.kube.custom.deleteClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', name: 'pods-drain-node-1' });
  }, 300_000);
});

describe('the source agent pod deleted mid-stream (--grace-period=0)', () => {
  it('rolls back: the source runs its own state again, not reset', async () => {
    const from = held.find((h) => h.node === 'node-2')!;
    const before = await simDigest(c.simDir('node-2'), from.device);
    const resetsBefore = (await c.device('node-2', from.device)).resets;
    const target = await freeDevice('node-1');
    await c.kube.createMigration({ metadata: { name: 'pods-source-killed' }, spec: { source: from, target: { node: 'node-1', device: target }, limits: { bandwidth: SLOW } } });
    await streaming('pods-source-killed');
    const agent = (await pods('agent')).find((p) => p.spec?.nodeName === 'node-2')!;
    await c.kubectl('delete', 'pod', '-n', ns, agent.metadata!.name!, '--grace-period=0', '--force', '--wait=false');
    const m = await settled(c.kube, 'pods-source-killed', 240_000);
    expect(m.status?.phase).toBe('RolledBack');
    const after = await simDigest(c.simDir('node-2'), from.device);
    expect(after).toMatchObject({ sha256: before.sha256, state: 'RUNNING' });
    expect((await c.device('node-2', from.device)).resets).toBe(resetsBefore);
    await waitReleaseReady(c.kube, NODES, c.state.options.controllerReplicas ?? 2);
  }, 300_000);
});

describe('a device the kubelet gave to a pod (PodResources, a device plugin)', () => {
  it('shows the pod on its DeviceNode, and no migration may put state on it; once the pod is gone it is free again', async () => {
    const node = podsNode(2);
    const device = await freeDevice(node.name);
    const targetBefore = await simDigest(c.simDir(node.name), device);
    // The test device plugin, registered with node-2's kubelet, advertises that one device by name.
    const plugin = spawn(process.execPath, [fileURLToPath(new URL('../../dist/tools/device-plugin.js', import.meta.url)),
      '--dir', join(kubeletRoot(node), 'device-plugins'), '--resource', SIM_RESOURCE, '--devices', device], { stdio: ['ignore', 'pipe', 'pipe'] });
    let pluginLog = '';
    plugin.stdout.on('data', (d: Buffer) => { pluginLog += d.toString(); });
    plugin.stderr.on('data', (d: Buffer) => { pluginLog += d.toString(); });
    const workload = 'pods-workload';
    try {
      await until(`node-2 allocatable ${SIM_RESOURCE}: 1`, async () => {
        const n = await c.kube.core.readNode({ name: node.name });
        return n.status?.allocatable?.[SIM_RESOURCE] === '1' || undefined;
      }, 60_000, 500).catch((e: Error) => Promise.reject(new Error(`${e.message}; the device plugin said: ${pluginLog}`)));
      await c.kube.core.createNamespacedPod({ namespace: 'default', body: {
        metadata: { name: workload },
        spec: {
          nodeSelector: { 'kubernetes.io/hostname': node.name },
          containers: [{ name: 'workload', image: PAUSE_IMAGE, imagePullPolicy: 'Never', resources: { limits: { [SIM_RESOURCE]: '1' } } }],
        },
      } });
      await until(`pod ${workload} Running`, async () => (await c.kube.core.readNamespacedPod({ name: workload, namespace: 'default' })).status?.phase === 'Running' || undefined, 120_000, 500);
      // The agent read it from the kubelet's PodResources socket: the DeviceNode names the pod.
      const shown = await until(`${node.name}/${device} Allocated to default/${workload}`, async () => {
        const d = (await c.kube.getDeviceNode(node.name))?.status?.devices?.find((x) => x.name === device);
        return d?.occupancy?.state === 'Allocated' ? d.occupancy : undefined;
      }, 60_000, 500);
      expect(shown.pods).toEqual([expect.objectContaining({ namespace: 'default', pod: workload, resource: SIM_RESOURCE })]);
      expect(await freeDevices(node.name)).not.toContain(device);
      // A migration aimed at it is refused, and nothing moves: neither the source nor the pod's device.
      const source = held.find((h) => h.node === 'node-1') ?? { node: 'node-1', device: await freeDevice('node-1') };
      const sourceBefore = await simDigest(c.simDir('node-1'), source.device);
      await c.kube.createMigration({ metadata: { name: 'pods-onto-allocated' }, spec: { source, target: { node: node.name, device } } });
      const m = await settled(c.kube, 'pods-onto-allocated');
      expect(m.status?.phase).toBe('Failed');
      expect(m.status?.failure).toMatchObject({ reason: 'DeviceOccupied', message: expect.stringContaining(`pod default/${workload}`) as unknown });
      expect(m.status?.arcs ?? []).toEqual([]);
      expect(await simDigest(c.simDir('node-1'), source.device)).toMatchObject({ sha256: sourceBefore.sha256, state: 'RUNNING' });
      expect((await simDigest(c.simDir(node.name), device)).sha256).toBe(targetBefore.sha256);
    } finally {
      await c.kube.core.deleteNamespacedPod({ name: workload, namespace: 'default', gracePeriodSeconds: 0 }).catch(() => undefined);
      plugin.kill('SIGTERM');
    }
    // The kubelet no longer lists it: the device is what it was before, free to receive.
    await until(`${node.name}/${device} free again`, async () => ((await freeDevices(node.name)).includes(device) ? true : undefined), 120_000, 1000);
  }, 300_000);
});

describe('logs and metrics, as an operator reads them', () => {
  it('kubectl logs of the controller, the agents and the holders are pino JSON', async () => {
    for (const [component, container] of [['controller', 'controller'], ['agent', 'agent'], ['holder', 'holder']] as const) {
      for (const p of await pods(component)) {
        const text = await c.kubectl('logs', '-n', ns, p.metadata!.name!, '-c', container);
        const lines = text.split('\n').filter((l) => l.trim());
        // The holder says nothing unless something fails; what it says must be JSON too.
        if (component !== 'holder') expect(lines.length > 0 ? 'logged' : `${p.metadata!.name}/${container} logged nothing`).toBe('logged');
        for (const l of lines) {
          const j = JSON.parse(l) as { level?: unknown; time?: unknown; msg?: unknown };
          expect([typeof j.level, typeof j.time, typeof j.msg]).toEqual(['number', 'number', 'string']);
        }
      }
    }
  }, 120_000);

  it('/metrics scraped through the Service answers with the devmig_ series', async () => {
    const text = await c.kubectl('get', '--raw', `/api/v1/namespaces/${ns}/services/${release}-controller-metrics:metrics/proxy/metrics`);
    for (const series of ['devmig_migrations_total', 'devmig_migration_duration_seconds', 'devmig_reconcile_total']) {
      expect(text).toMatch(new RegExp(`^# TYPE ${series} `, 'm'));
    }
  }, 60_000);
});

describe('the image, as built from the Dockerfile', () => {
  it('is lean: no package that only the build needs, one Node binary (the base image\'s), no declarations or source maps', async () => {
    // What npm marks dev-only in the lockfile must not be in the image (npm prune --omit=dev).
    const lock = JSON.parse(await readFile(new URL('../../package-lock.json', import.meta.url), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const devOnly = Object.entries(lock.packages).filter(([p, v]) => p && v.dev).map(([p]) => p);
    expect(devOnly).toEqual(expect.arrayContaining(['node_modules/typescript', 'node_modules/jest', 'node_modules/node']));
    const script = `
      const fs = require('fs'), path = require('path');
      const dev = JSON.parse(process.argv[1]).filter((p) => fs.existsSync('/app/' + p));
      const nodes = [], notRun = [];
      const walk = (d) => { let es = []; try { es = fs.readdirSync(d, { withFileTypes: true }); } catch { return; }
        for (const e of es) { const p = path.join(d, e.name);
          if (e.isDirectory() && !['/proc', '/sys', '/dev'].includes(p)) walk(p);
          else if (e.isFile() && e.name === 'node' && fs.statSync(p).size > 10e6) nodes.push(p);
          else if (e.isFile() && p.startsWith('/app/node_modules/') && /\\.(d\\.[cm]?ts|map)$/.test(e.name)) notRun.push(p); } };
      walk('/');
      console.log(JSON.stringify({ dev, nodes, notRun: notRun.length }));`;
    const pod = (await pods('controller'))[0]!.metadata!.name!;
    const found = JSON.parse(await c.kubectl('exec', '-n', ns, pod, '-c', 'controller', '--', 'node', '-e', script, JSON.stringify(devOnly))) as { dev: string[]; nodes: string[] };
    // Nor the dependencies' type declarations and source maps: node never reads them (the Dockerfile
    // deletes them; devmig's own maps stay, for --enable-source-maps).
    expect(found).toEqual({ dev: [], nodes: ['/usr/local/bin/node'], notRun: 0 });
  }, 120_000);
});

describe('helm uninstall', () => {
  it('leaves the CRDs and the DeviceMigrations, and nothing else of the release', async () => {
    const migrations = (await c.kube.listMigrations()).map((m) => m.metadata.name).sort();
    expect(migrations.length).toBeGreaterThan(4);
    await c.helm('uninstall', release, '--namespace', ns, '--wait', '--timeout', '3m');
    const crds = await c.kubectl('get', 'crd', '-o', 'name');
    for (const kind of ['devicemigrations', 'devicenodes', 'deviceevacuations', 'devicemigrationgroups']) expect(crds).toContain(`${kind}.devmig.io`);
    expect((await c.kube.listMigrations()).map((m) => m.metadata.name).sort()).toEqual(migrations);
    await until('the release\'s pods gone', async () => ((await c.kubectl('get', 'pods', '-n', ns, '-o', 'name')).trim() === '' ? true : undefined), 180_000, 1000);
    // What the controller and agents made (PKI Secret and ConfigMap, Lease, DeviceNodes) names the
    // release's ClusterRoles as owner: the garbage collector takes it once helm deleted those.
    const leftovers = async () => {
      const kinds = 'deployments,daemonsets,replicasets,pods,services,configmaps,secrets,serviceaccounts,roles,rolebindings,leases';
      const namespaced = (await c.kubectl('get', kinds, '-n', ns, '-o', 'name')).split('\n').filter((l) => l && !l.endsWith('/default') && !l.endsWith('/kube-root-ca.crt'));
      const cluster = (await c.kubectl('get', 'clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings',
        '-l', `app.kubernetes.io/instance=${release}`, '-o', 'name')).split('\n').filter(Boolean);
      const deviceNodes = (await c.kubectl('get', 'devicenodes', '-o', 'name')).split('\n').filter(Boolean);
      return { namespaced, cluster, deviceNodes };
    };
    const none = { namespaced: [], cluster: [], deviceNodes: [] };
    await until('the garbage collector took what the release made', async () => JSON.stringify(await leftovers()) === JSON.stringify(none) || undefined, 120_000, 1000)
      .catch(() => undefined);
    expect(await leftovers()).toEqual(none);
  }, 300_000);
});
