/**
 * An evacuation moves what a node's devices hold, not the devices: on node-1, sim-0 is spare (free,
 * empty), sim-1 was found in use (FoundInUse), and sim-2 is spare but the kubelet gave it to a pod
 * (a PodResources server speaking the real gRPC API). The evacuation moves sim-1 and sim-2, leaves
 * sim-0 alone, and puts nothing on node-2's device that a pod has.
 */
import * as k8s from '@kubernetes/client-node';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import type { DeviceEvacuation } from '../../src/kube/kube.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { localCluster } from '../helpers/local.js';
import { FakePodResources } from '../helpers/podresources-server.js';

const kubelets: FakePodResources[] = [];
const pod = (name: string, device: string) => ({ name, namespace: 'vms', containers: [{ name: 'compute', devices: [{ resourceName: 'devmig.io/sim', deviceIds: [device] }], dynamicResources: [] }] });
const podResources = (node: string) => ({ socket: join(tmpdir(), `devmig-mix-${process.pid}-${node}.sock`), intervalSeconds: 0.5, resources: { 'devmig.io/sim': 'name' } });

beforeAll(async () => {
  // The kubelets answer before the agents start: each agent's first List says who has what.
  for (const node of ['node-1', 'node-2']) {
    const k = await FakePodResources.start(podResources(node).socket);
    kubelets.push(k);
  }
  kubelets[0]!.list = { podResources: [pod('vm-a', 'sim-2')] };
  kubelets[1]!.list = { podResources: [pod('vm-b', 'sim-0')] };
});
afterAll(async () => {
  for (const k of kubelets) k.stop();
  for (const node of ['node-1', 'node-2']) await rm(podResources(node).socket, { force: true });
});

const local = localCluster('evacuation-mix', {
  nodes: 2, devices: 3, stateSize: '4Mi', loopbackPrefix: '127.0.22',
  spare: { 'node-1': ['sim-0', 'sim-2'] },
  podResources: { 'node-1': podResources('node-1'), 'node-2': podResources('node-2') },
});

it('moves the held and the allocated devices, not the spare one; targets only free devices no pod has', async () => {
  const dir = (n: string) => local.simDir(n);
  const before = await Promise.all(['sim-0', 'sim-1', 'sim-2'].map((d) => simDigest(dir('node-1'), d)));
  const n1 = (await local.kube.getDeviceNode('node-1'))!.status!.devices!;
  expect(n1.map((d) => [d.name, d.occupancy?.state, d.occupancy?.reason])).toEqual([
    ['sim-0', 'Free', 'Spare'], ['sim-1', 'Holding', 'FoundInUse'], ['sim-2', 'Allocated', 'Spare'],
  ]);
  expect(n1[2]!.occupancy?.pods).toEqual([{ namespace: 'vms', pod: 'vm-a', container: 'compute', resource: 'devmig.io/sim' }]);

  await local.kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', name: 'mix', fieldManager: 'gitops', force: true,
    body: { apiVersion: API_VERSION, kind: 'DeviceEvacuation', metadata: { name: 'mix' }, spec: { node: 'node-1', maxParallel: 2 } } },
  k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.ServerSideApply));
  const e = await until<DeviceEvacuation>('mix finished', async () => {
    const x = await local.kube.getEvacuation('mix');
    return x?.status?.finishedAt ? x : undefined;
  }, 90_000, 200);
  expect(e.status).toMatchObject({ phase: 'Succeeded', counts: { total: 2, succeeded: 2 } });
  expect(e.status!.devices!.map((d) => d.device)).toEqual(['sim-1', 'sim-2']);
  // node-2's sim-0 is a pod's: never a target.
  const targets = e.status!.devices!.map((d) => `${d.targetNode}/${d.targetDevice}`).sort();
  expect(targets).toEqual(['node-2/sim-1', 'node-2/sim-2']);
  for (const d of e.status!.devices!) {
    const i = Number(d.device.slice(-1));
    expect((await simDigest(dir('node-2'), d.targetDevice!)).sha256).toBe(before[i]!.sha256);
  }
  // The spare device was not touched.
  expect(await simDigest(dir('node-1'), 'sim-0')).toEqual(before[0]);
}, 150_000);
