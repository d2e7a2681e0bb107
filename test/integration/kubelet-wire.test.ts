/**
 * Our message declarations against the kubelet's own: a small Go program (test/kubelet-grpc) built
 * from k8s.io/kubelet's generated types and grpc-go plays the kubelet. The other tests' fakes share
 * our declarations, so a wrong field number would pass there; here it cannot. The fixture also
 * carries the fields we do not declare (CPU ids, memory, topology, CDI devices), which must be
 * skipped, not misread.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { TestDevicePlugin } from '../../src/kubelet/deviceplugin.js';
import { PodResourcesClient } from '../../src/kubelet/podresources.js';
import { goBinary, run } from '../../src/local/apiserver.js';
import { repoRoot } from '../helpers/cli.js';

let dir: string;
let bin: string;
const children: ChildProcessWithoutNullStreams[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-wire-'));
  bin = join(dir, 'kubelet-grpc');
  await run(goBinary(), ['build', '-o', bin, '.'], join(repoRoot, 'test/kubelet-grpc'), { ...process.env, GOFLAGS: '-mod=mod' });
}, 300_000);

afterAll(async () => {
  for (const c of children) c.kill('SIGKILL');
  await rm(dir, { recursive: true, force: true });
});

/** Starts the Go side and returns its stdout lines after "ready". */
async function start(args: string[], stdin?: string): Promise<AsyncIterator<string>> {
  const child = spawn(bin, args);
  children.push(child);
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  child.stdin.end(stdin ?? '');
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  if (first.value !== 'ready') throw new Error(`kubelet-grpc ${args.join(' ')} did not start: ${stderr}`);
  return lines;
}

it('reads List and GetAllocatableResources as the kubelet\'s own types encode them', async () => {
  const socket = join(dir, 'pod-resources.sock');
  const numa = { topology: { nodes: [{ ID: '1' }] } };
  await start(['podresources', socket], JSON.stringify({
    list: {
      pod_resources: [{
        name: 'trainer', namespace: 'ml',
        containers: [
          {
            name: 'main', cpu_ids: ['4'], memory: [{ memory_type: 'memory', size: '1073741824', ...numa }],
            devices: [{ resource_name: 'devmig.io/sim', device_ids: ['sim-0'], ...numa }, { resource_name: 'devmig.io/sim', device_ids: ['sim-1'] }],
          },
          {
            name: 'gpu',
            dynamic_resources: [{
              claim_name: 'gpu-claim', claim_namespace: 'ml',
              claim_resources: [{ cdi_devices: [{ name: 'example.com/gpu=gpu-3' }], driver_name: 'gpu.example.com', pool_name: 'node-1', device_name: 'gpu-3', share_id: 'a1' }],
            }],
          },
        ],
      }, { name: 'idle', namespace: 'default', containers: [{ name: 'c' }] }],
    },
    allocatable: { devices: [{ resource_name: 'devmig.io/sim', device_ids: ['sim-0', 'sim-1', 'sim-2'], ...numa }], cpu_ids: ['0', '1'] },
  }));
  const client = new PodResourcesClient({ socket, timeoutMs: 5000 });
  expect(await client.list()).toEqual([
    { namespace: 'ml', pod: 'trainer', container: 'main', resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1'] },
    {
      namespace: 'ml', pod: 'trainer', container: 'gpu', resourceName: 'gpu.example.com', deviceIds: ['gpu-3'],
      claim: { name: 'gpu-claim', namespace: 'ml', driver: 'gpu.example.com', pool: 'node-1', device: 'gpu-3' },
    },
  ]);
  expect(await client.allocatable()).toEqual([{ resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1', 'sim-2'] }]);
  client.close();
});

it('the test device plugin registers with, and is allocated by, the kubelet\'s own types', async () => {
  const plugins = join(dir, 'device-plugins');
  await mkdir(plugins);
  const lines = await start(['kubelet', plugins]);
  const plugin = await new TestDevicePlugin({ dir: plugins, resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1', 'sim-2'] }).start();
  try {
    expect(plugin.registrations).toBe(1);
    const line = await lines.next();
    expect(JSON.parse(line.value as string)).toEqual({
      register: {
        version: 'v1beta1', endpoint: 'devmig.io-sim.sock', resource_name: 'devmig.io/sim',
        options: { pre_start_required: false, get_preferred_allocation_available: false },
      },
      options: { pre_start_required: false, get_preferred_allocation_available: false },
      listAndWatch: { devices: ['sim-0', 'sim-1', 'sim-2'].map((ID) => ({ ID, health: 'Healthy', topology: null })) },
      allocate: { container_responses: [{ envs: {}, mounts: [], devices: [], annotations: {}, cdi_devices: [] }, { envs: {}, mounts: [], devices: [], annotations: {}, cdi_devices: [] }] },
      containerResponses: 2,
    });
  } finally {
    await plugin.stop();
  }
});
