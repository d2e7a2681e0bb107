/**
 * DeviceEvacuation on the local control plane: every device that holds a workload's state leaves the node (the spare, free ones stay), no more at once
 * than spec.maxParallel and the controller's cluster-wide limit allow, onto nodes the selector
 * admits; its status adds up; cancel rolls back what runs and starts nothing; applying the same
 * YAML again changes nothing, and the controller never writes an evacuation's spec.
 */
import * as k8s from '@kubernetes/client-node';
import { API_VERSION } from '../../src/api/names.js';
import { EVACUATION_LABEL } from '../../src/controller/evacuation.js';
import { FIELD_MANAGER, type DeviceEvacuation } from '../../src/kube/kube.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { FINAL } from '../helpers/faults.js';
import { localCluster } from '../helpers/local.js';

// node-1, -2 and -3 start with their devices in use (FoundInUse: their agents declare none spare), so
// there is something to evacuate; node-4's and node-5's are spare: free targets.
const local = localCluster('evacuation', {
  nodes: 5, devices: 3, stateSize: '4Mi', loopbackPrefix: '127.0.17', evacuationMaxParallelTotal: 2,
  spare: { 'node-1': [], 'node-2': [], 'node-3': [] },
});
const GITOPS = 'argocd-controller';

const simDir = (node: string) => local.simDir(node);

/** Server-side apply, as a GitOps tool does it: the same document every time. */
async function apply(name: string, spec: Record<string, unknown>): Promise<DeviceEvacuation> {
  const body = { apiVersion: API_VERSION, kind: 'DeviceEvacuation', metadata: { name }, spec };
  return (await local.kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', name, body, fieldManager: GITOPS, force: true },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.ServerSideApply))) as DeviceEvacuation;
}

/** Samples the evacuation and its migrations every 50 ms until `done` says so; the most at once. */
async function follow(names: string[], done: (es: DeviceEvacuation[]) => boolean, ms = 120_000): Promise<{ es: DeviceEvacuation[]; peak: Record<string, number>; peakTotal: number }> {
  const peak: Record<string, number> = {};
  let peakTotal = 0;
  const deadline = Date.now() + ms;
  for (;;) {
    const all = await local.kube.listMigrations(EVACUATION_LABEL);
    const moving = all.filter((m) => !FINAL.includes(m.status?.phase ?? ''));
    peakTotal = Math.max(peakTotal, moving.length);
    for (const n of names) peak[n] = Math.max(peak[n] ?? 0, moving.filter((m) => m.metadata.labels?.[EVACUATION_LABEL] === n).length);
    const es = await Promise.all(names.map(async (n) => (await local.kube.getEvacuation(n))!));
    if (done(es)) return { es, peak, peakTotal };
    if (Date.now() > deadline) throw new Error(`evacuations not done in ${ms / 1000}s: ${JSON.stringify(es.map((e) => e.status))}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
const finished = (es: DeviceEvacuation[]) => es.every((e) => e.status?.finishedAt);

/** The node's maintenance is over: deleting its evacuation gives the node back as a target. */
async function remove(name: string): Promise<void> {
  await local.kube.custom.deleteClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', name });
  const deadline = Date.now() + 30_000;
  while (await local.kube.getEvacuation(name)) {
    if (Date.now() > deadline) throw new Error(`deviceevacuation ${name} still there 30 s after its delete`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
const DEVICES = ['sim-0', 'sim-1', 'sim-2'];

/** An evacuation reads the node's published inventory: wait until it shows the last migrations' end. */
async function quiet(node: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const dn = await local.kube.getDeviceNode(node);
    if (dn?.status?.devices?.filter((d) => d.state === 'RUNNING' && !d.migration).length === 3) return;
    if (Date.now() > deadline) throw new Error(`${node} never showed 3 free running devices: ${JSON.stringify(dn?.status?.devices)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A node (not `but`) whose three devices all are free to receive (their agents say so), labelled pool=<pool>. */
async function spareNode(but: string, pool: string): Promise<string> {
  const nodes = await local.kube.listDeviceNodes();
  const free = (n: string) => nodes.find((x) => x.metadata.name === n)?.status?.devices?.filter((d) => d.occupancy?.state === 'Free' && !d.migration).length === 3;
  const node = ['node-1', 'node-2', 'node-3', 'node-4'].find((n) => n !== but && free(n));
  if (!node) throw new Error(`no node with three free devices: ${JSON.stringify(nodes.map((n) => [n.metadata.name, n.status?.devices?.map((d) => d.occupancy?.state)]))}`);
  await local.kube.core.patchNode({ name: node, body: { metadata: { labels: { pool } } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  return node;
}

it('moves every device off the node, one at a time, with the state intact; applying again changes nothing', async () => {
  const before = await Promise.all(DEVICES.map((d) => simDigest(simDir('node-1'), d)));
  await apply('drain-node-1', { node: 'node-1', maxParallel: 1 });
  const { es: [e], peak } = await follow(['drain-node-1'], finished);
  expect(e!.status).toMatchObject({ phase: 'Succeeded', counts: { total: 3, succeeded: 3, running: 0, failed: 0, waiting: 0 } });
  expect(peak['drain-node-1']).toBe(1);
  expect(e!.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', reason: 'Succeeded', message: '3 of 3 moved, 0 moving, 0 failed, 0 waiting' });
  for (const [i, dev] of e!.status!.devices!.entries()) {
    expect(dev).toMatchObject({ device: `sim-${i}`, migration: `drain-node-1-sim-${i}`, phase: 'Succeeded' });
    expect(dev.targetNode).not.toBe('node-1');
    // The workload's state is on the target, bit for bit.
    expect((await simDigest(simDir(dev.targetNode!), dev.targetDevice!)).sha256).toBe(before[i]!.sha256);
  }
  // Three devices, three distinct targets: a device that just received one is not free for the next.
  // Each source was reset once its target ran, and is free (the state lives on the target only).
  const after = (await local.kube.getDeviceNode('node-1'))!.status!.devices!;
  for (const [i, d] of DEVICES.entries()) {
    expect(after.find((x) => x.name === d)?.occupancy).toMatchObject({ state: 'Free', reason: 'SourceReleased', migration: `drain-node-1-${d}` });
    expect((await simDigest(simDir('node-1'), d)).sha256).not.toBe(before[i]!.sha256);
  }
  expect(new Set(e!.status!.devices!.map((d) => `${d.targetNode}/${d.targetDevice}`)).size).toBe(3);

  // GitOps: the controller wrote status only; applying the same YAML is a no-op.
  const managers = e!.metadata as unknown as { managedFields: Array<{ manager: string; subresource?: string; fieldsV1?: { 'f:spec'?: unknown } }> };
  expect(managers.managedFields.filter((f) => f.fieldsV1?.['f:spec']).map((f) => f.manager)).toEqual([GITOPS]);
  expect(managers.managedFields.filter((f) => f.manager === FIELD_MANAGER).every((f) => f.subresource === 'status')).toBe(true);
  expect(e!.metadata.generation).toBe(1);
  const again = await apply('drain-node-1', { node: 'node-1', maxParallel: 1 });
  expect(again.metadata.resourceVersion).toBe(e!.metadata.resourceVersion);
  await new Promise((r) => setTimeout(r, 2000));
  expect((await local.kube.listMigrations(`${EVACUATION_LABEL}=drain-node-1`)).length).toBe(3);
  expect((await local.kube.getEvacuation('drain-node-1'))!.metadata.resourceVersion).toBe(e!.metadata.resourceVersion);

  // Succeeded, it still cordons node-1: an evacuation that may only go there finds no target.
  await local.kube.core.patchNode({ name: 'node-1', body: { metadata: { labels: { pool: 'drained' } } } }, k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
  const spec = { node: 'node-2', targetNodeSelector: { matchLabels: { pool: 'drained' } } };
  await apply('drain-onto-1', spec);
  const { es: [w] } = await follow(['drain-onto-1'], ([x]) => Boolean(x?.status?.conditions?.some((c) => c.reason === 'NoTarget')), 30_000);
  expect(w!.status?.counts).toMatchObject({ total: 3, waiting: 3, running: 0 });
  await apply('drain-onto-1', { ...spec, cancel: true });
  await follow(['drain-onto-1'], finished, 30_000);
  await remove('drain-onto-1');
  await remove('drain-node-1');
}, 180_000);

it('holds two evacuations to the cluster-wide limit together, and never moves a device onto an evacuated node', async () => {
  // node-3's evacuation first waits for a target (its selector matches nothing), so it exists before
  // node-2's starts; then its selector is widened: neither may pick the other's node, not even once
  // the other has finished (an evacuation cordons its node until it is deleted).
  await apply('drain-node-3', { node: 'node-3', maxParallel: 2, targetNodeSelector: { matchLabels: { pool: 'later' } } });
  await follow(['drain-node-3'], ([x]) => Boolean(x?.status?.conditions?.some((c) => c.reason === 'NoTarget')), 30_000);
  await apply('drain-node-2', { node: 'node-2', maxParallel: 2 });
  await apply('drain-node-3', { node: 'node-3', maxParallel: 2 });
  const { es, peakTotal } = await follow(['drain-node-2', 'drain-node-3'], finished, 180_000);
  for (const e of es) expect(e.status).toMatchObject({ phase: 'Succeeded', counts: { succeeded: 3, failed: 0 } });
  // Each may run 2, the controller allows 2 over all evacuations (local env: evacuationMaxParallelTotal 2).
  expect(peakTotal).toBeLessThanOrEqual(2);
  expect(peakTotal).toBeGreaterThanOrEqual(1);
  const targets = es.flatMap((e) => e.status!.devices!.map((d) => `${d.targetNode}/${d.targetDevice}`));
  expect(new Set(targets).size).toBe(6);
  // Nothing went to either evacuated node; node-1 is a target again since drain-node-1 was deleted.
  const nodes = es.flatMap((e) => e.status!.devices!.map((d) => d.targetNode));
  expect(nodes.filter((n) => !['node-1', 'node-4', 'node-5'].includes(n!))).toEqual([]);
  expect(nodes).toContain('node-1');
  await remove('drain-node-2');
  await remove('drain-node-3');
}, 180_000);

it('waits with TargetsAvailable False when no node matches, and cancel ends it with nothing started', async () => {
  await quiet('node-4');
  await apply('drain-nowhere', { node: 'node-4', targetNodeSelector: { matchLabels: { pool: 'nonexistent' } } });
  const { es: [e] } = await follow(['drain-nowhere'], ([x]) => Boolean(x?.status?.conditions?.some((c) => c.type === 'TargetsAvailable' && c.status === 'False')), 30_000);
  expect(e!.status?.phase).toBe('Pending');
  expect(e!.status?.conditions?.find((c) => c.type === 'TargetsAvailable')).toMatchObject({
    reason: 'NoTarget', message: expect.stringMatching(/sim-0, sim-1, sim-2: no node matching spec.targetNodeSelector \(pool=nonexistent\)/) as unknown,
  });
  expect(await local.kube.listMigrations(`${EVACUATION_LABEL}=drain-nowhere`)).toHaveLength(0);

  await apply('drain-nowhere', { node: 'node-4', targetNodeSelector: { matchLabels: { pool: 'nonexistent' } }, cancel: true });
  const { es: [c] } = await follow(['drain-nowhere'], finished, 30_000);
  expect(c!.status?.phase).toBe('Cancelled');
  expect(c!.status?.devices?.map((d) => d.phase)).toEqual(['NotStarted', 'NotStarted', 'NotStarted']);
  expect(await local.kube.listMigrations(`${EVACUATION_LABEL}=drain-nowhere`)).toHaveLength(0);
}, 90_000);

it('cancel rolls back the running migration, starts no new one, and leaves the sources running', async () => {
  await quiet('node-4');
  await spareNode('node-4', 'b');
  const before = await Promise.all(DEVICES.map((d) => simDigest(simDir('node-4'), d)));
  // 4 MiB at 512 KiB/s: each migration streams for about 8 s.
  const spec = { node: 'node-4', maxParallel: 1, strategy: 'StopCopy', limits: { bandwidth: '512Ki' }, targetNodeSelector: { matchLabels: { pool: 'b' } } };
  await apply('drain-cancel', spec);
  await follow(['drain-cancel'], ([x]) => x?.status?.counts?.running === 1, 30_000);
  await new Promise((r) => setTimeout(r, 1500));
  await apply('drain-cancel', { ...spec, cancel: true });
  const { es: [e] } = await follow(['drain-cancel'], finished, 90_000);
  expect(e!.status?.phase).toBe('Cancelled');
  const ms = await local.kube.listMigrations(`${EVACUATION_LABEL}=drain-cancel`);
  expect(ms).toHaveLength(1);
  expect(['RolledBack', 'Cancelled']).toContain(ms[0]!.status?.phase);
  expect(e!.status?.devices?.map((d) => d.phase).sort()).toEqual(['NotStarted', 'NotStarted', ms[0]!.status!.phase!].sort());
  for (const [i, d] of DEVICES.entries()) {
    const now = await simDigest(simDir('node-4'), d);
    expect(now.state).toBe('RUNNING');
    expect(now.sha256).toBe(before[i]!.sha256);
  }
}, 180_000);

it('kubectl devmig evacuate creates one, follows it to the end, and refuses bad flags', async () => {
  const { pluginMain } = await import('../../src/cli/plugin.js');
  const plugin = async (...args: string[]) => {
    let stdout = '';
    let stderr = '';
    const code = await pluginMain(['--kubeconfig', local.env.kubeconfig, ...args], { out: (t) => { stdout += `${t}\n`; }, err: (t) => { stderr += `${t}\n`; } });
    return { code, stdout, stderr };
  };
  await quiet('node-4');
  const spare = await spareNode('node-4', 'c');
  const r = await plugin('evacuate', 'node-4', '--to-selector', 'pool=c', '--max-parallel', '2', '--wait', '-o', 'json');
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const e = JSON.parse(r.stdout) as DeviceEvacuation;
  expect(e.metadata.name).toBe('evacuate-node-4');
  expect(e.spec).toMatchObject({ node: 'node-4', maxParallel: 2, targetNodeSelector: { matchLabels: { pool: 'c' } } });
  expect(e.status).toMatchObject({ phase: 'Succeeded', counts: { total: 3, succeeded: 3 } });
  expect(e.status?.devices?.every((d) => d.targetNode === spare)).toBe(true);

  const again = await plugin('evacuate', 'node-4');
  expect(again.code).toBe(1);
  expect(again.stderr).toMatch(/deviceevacuation evacuate-node-4 exists: follow it with kubectl get devac evacuate-node-4 -w, or pick another --name/);
  const zero = await plugin('evacuate', 'node-4', '--name', 'x', '--max-parallel', '0');
  expect(zero).toMatchObject({ code: 2, stderr: expect.stringMatching(/--max-parallel 0: a whole number from 1 to 64/) as unknown });
  const sel = await plugin('evacuate', 'node-4', '--name', 'x', '--to-selector', 'pool');
  expect(sel).toMatchObject({ code: 2, stderr: expect.stringMatching(/--to-selector "pool": write key=value/) as unknown });
  const node = await plugin('evacuate', 'Node_4', '--name', 'x');
  expect(node).toMatchObject({ code: 2, stderr: expect.stringMatching(/node "Node_4": not a node name/) as unknown });
  expect(await local.kube.getEvacuation('x')).toBeUndefined();
  const text = await plugin('status', 'evacuate-node-4-sim-0');
  expect(text.stdout).toMatch(/Succeeded/);
}, 120_000);

it('rejects an evacuation whose node changes, and a cancel taken back', async () => {
  await apply('drain-immutable', { node: 'node-9', cancel: true });
  await expect(apply('drain-immutable', { node: 'node-8', cancel: true })).rejects.toThrow(/spec.node is immutable/);
  await expect(apply('drain-immutable', { node: 'node-9', cancel: false })).rejects.toThrow(/cancel/);
}, 30_000);

it('deleting an evacuation starts nothing more, and what already moves finishes (labelled, not owned)', async () => {
  const moved = await local.kube.getEvacuation('evacuate-node-4');
  const node = moved!.status!.devices![0]!.targetNode!;
  await quiet(node);
  // 4 MiB at 512 KiB/s: each migration streams for about 8 s, one at a time.
  await apply('drain-deleted', { node, maxParallel: 1, strategy: 'StopCopy', limits: { bandwidth: '512Ki' } });
  await follow(['drain-deleted'], ([x]) => x?.status?.counts?.running === 1, 30_000);
  await local.kube.custom.deleteClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', name: 'drain-deleted' });
  const started = await local.kube.listMigrations(`${EVACUATION_LABEL}=drain-deleted`);
  expect(started).toHaveLength(1);
  const deadline = Date.now() + 60_000;
  let m = started[0]!;
  while (!FINAL.includes(m.status?.phase ?? '')) {
    if (Date.now() > deadline) throw new Error(`${m.metadata.name} did not finish: ${JSON.stringify(m.status)}`);
    await new Promise((r) => setTimeout(r, 200));
    m = (await local.kube.getMigration(m.metadata.name))!;
  }
  expect(m.status?.phase).toBe('Succeeded');
  await new Promise((r) => setTimeout(r, 2000));
  expect(await local.kube.listMigrations(`${EVACUATION_LABEL}=drain-deleted`)).toHaveLength(1);
}, 120_000);
