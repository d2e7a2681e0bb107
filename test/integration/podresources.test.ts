/**
 * The PodResources client against a server speaking the kubelet's gRPC protocol over a real unix
 * socket: what it reads (device plugins, two containers, DRA, an empty node), and each way the
 * kubelet can be out of reach, each with an error that names the socket and what to do.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PodResourcesClient, PodResourcesError, type PodResourcesErrorCode } from '../../src/kubelet/podresources.js';
import type { ListPodResourcesResponse } from '../../src/kubelet/podresources-api.js';
import { lastJson, repoRoot, runScript } from '../helpers/cli.js';
import { FakePodResources } from '../helpers/podresources-server.js';

let dir: string;
let socket: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-podres-'));
  await mkdir(join(dir, 'pod-resources'));
  socket = join(dir, 'pod-resources', 'kubelet.sock');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** As a kubelet lists a node: one entry per device and NUMA node, pods without devices, DRA claims. */
const NODE: ListPodResourcesResponse = {
  podResources: [
    {
      name: 'trainer', namespace: 'ml', containers: [
        { name: 'main', devices: [{ resourceName: 'devmig.io/sim', deviceIds: ['sim-0'] }, { resourceName: 'devmig.io/sim', deviceIds: ['sim-1'] }], dynamicResources: [] },
        { name: 'sidecar', devices: [{ resourceName: 'intel.com/sriov', deviceIds: ['0000:3b:00.1'] }], dynamicResources: [] },
      ],
    },
    { name: 'web', namespace: 'default', containers: [{ name: 'nginx', devices: [], dynamicResources: [] }] },
    {
      name: 'inference', namespace: 'ml', containers: [{
        name: 'server', devices: [], dynamicResources: [{
          claimName: 'gpu-claim', claimNamespace: 'ml', claimResources: [
            { driverName: 'gpu.example.com', poolName: 'node-1', deviceName: 'gpu-3' },
            { driverName: 'gpu.example.com', poolName: 'node-1', deviceName: '' },
          ],
        }],
      }],
    },
  ],
};

async function failure(p: Promise<unknown>): Promise<PodResourcesError> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(PodResourcesError);
  return e as PodResourcesError;
}

function expectFailure(e: PodResourcesError, code: PodResourcesErrorCode, what: RegExp): void {
  expect(e.code).toBe(code);
  expect(e.message).toContain(socket);
  expect(e.message).toMatch(what);
}

describe('answers', () => {
  let server: FakePodResources;
  let client: PodResourcesClient;
  beforeEach(async () => {
    server = await FakePodResources.start(socket);
    client = new PodResourcesClient({ socket, timeoutMs: 5000 });
  });
  afterEach(() => {
    client.close();
    server.stop();
  });

  it('List: each container\'s devices by resource, and DRA devices with their claim', async () => {
    server.list = NODE;
    expect(await client.list()).toEqual([
      { namespace: 'ml', pod: 'trainer', container: 'main', resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1'] },
      { namespace: 'ml', pod: 'trainer', container: 'sidecar', resourceName: 'intel.com/sriov', deviceIds: ['0000:3b:00.1'] },
      {
        namespace: 'ml', pod: 'inference', container: 'server', resourceName: 'gpu.example.com', deviceIds: ['gpu-3'],
        claim: { name: 'gpu-claim', namespace: 'ml', driver: 'gpu.example.com', pool: 'node-1', device: 'gpu-3' },
      },
    ]);
    expect(server.calls).toEqual(['List']);
  });

  it('GetAllocatableResources: the devices the kubelet can hand out, by resource', async () => {
    server.allocatable = {
      devices: [
        { resourceName: 'devmig.io/sim', deviceIds: ['sim-0'] }, { resourceName: 'devmig.io/sim', deviceIds: ['sim-1', 'sim-2'] },
        { resourceName: 'intel.com/sriov', deviceIds: ['0000:3b:00.1', '0000:3b:00.2'] },
      ],
    };
    expect(await client.allocatable()).toEqual([
      { resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1', 'sim-2'] },
      { resourceName: 'intel.com/sriov', deviceIds: ['0000:3b:00.1', '0000:3b:00.2'] },
    ]);
  });

  it('an empty node: nothing allocated, nothing allocatable', async () => {
    expect(await client.list()).toEqual([]);
    expect(await client.allocatable()).toEqual([]);
  });

  it('one client serves many calls, and sees what changed between them', async () => {
    expect(await client.list()).toEqual([]);
    server.list = NODE;
    expect(await client.list()).toHaveLength(3);
  });
});

describe('failures', () => {
  it('the socket missing, its directory there: is the kubelet running, is the feature on', async () => {
    const client = new PodResourcesClient({ socket, timeoutMs: 5000 });
    expectFailure(await failure(client.list()), 'SocketMissing', /does not exist: is the kubelet running.*KubeletPodResources/);
    client.close();
  });

  it('the directory missing: mount the kubelet\'s pod-resources directory', async () => {
    const elsewhere = join(dir, 'not-mounted', 'kubelet.sock');
    const client = new PodResourcesClient({ socket: elsewhere, timeoutMs: 5000 });
    const e = await failure(client.allocatable());
    expect(e.code).toBe('SocketMissing');
    expect(e.message).toContain(elsewhere);
    expect(e.message).toMatch(/nor its directory .*mount the kubelet's pod-resources directory.*read-only/);
    client.close();
  });

  it('a directory where the socket should be (a hostPath that created it): not a socket', async () => {
    await mkdir(socket);
    const client = new PodResourcesClient({ socket, timeoutMs: 5000 });
    expectFailure(await failure(client.list()), 'NotASocket', /is not a socket: mount the kubelet's pod-resources directory/);
    client.close();
  });

  it('a socket nothing listens on: the kubelet is not running', async () => {
    // What a killed kubelet leaves: the socket file, and no listener behind it.
    const kubelet = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socket)}, () => console.log('up'))`]);
    await new Promise((r) => kubelet.stdout.once('data', r));
    kubelet.kill('SIGKILL');
    await new Promise((r) => kubelet.once('exit', r));
    expect(existsSync(socket)).toBe(true);
    const client = new PodResourcesClient({ socket, timeoutMs: 5000 });
    expectFailure(await failure(client.list()), 'KubeletNotListening', /nothing listens/);
    client.close();
  });

  it('a kubelet that never answers: the call ends at its deadline', async () => {
    const server = await FakePodResources.start(socket);
    server.answering = false;
    const client = new PodResourcesClient({ socket, timeoutMs: 300 });
    const started = Date.now();
    expectFailure(await failure(client.list()), 'Timeout', /no answer .* to List in 300 ms/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(server.calls).toEqual(['List']);
    client.close();
    server.stop();
  });

  it('UNIMPLEMENTED (an older kubelet, or a feature gate off): says which method and what to do', async () => {
    const server = await FakePodResources.start(socket, ['List']);
    const client = new PodResourcesClient({ socket, timeoutMs: 5000 });
    expect(await client.list()).toEqual([]);
    const e = await failure(client.allocatable());
    expectFailure(e, 'Unimplemented', /does not implement GetAllocatableResources.*KubeletPodResourcesGetAllocatable/);
    expect(e.grpcCode).toBe(12);
    client.close();
    server.stop();
  });

  it('permission denied: an agent that is not root cannot connect to the root-owned socket', async () => {
    const server = await FakePodResources.start(socket);
    // As the kubelet leaves it: the directories searchable, the socket writable (so connectable) by root only.
    await chmod(dir, 0o755);
    await chmod(join(dir, 'pod-resources'), 0o755);
    await chmod(socket, 0o755);
    const r = await runScript(join(repoRoot, 'test/integration/fixtures/podresources-as-nobody.ts'), [socket], {
      NODE_OPTIONS: `--experimental-transform-types --no-warnings --import ${join(repoRoot, 'test/helpers/ts-hooks.ts')}`,
    });
    expect(r.stderr).toBe('');
    const out = lastJson(r.stdout) as { code: string; message: string };
    expect(out.code).toBe('PermissionDenied');
    expect(out.message).toContain(socket);
    expect(out.message).toMatch(/permission denied .*run the agent's container as root/);
    expect(server.calls).toEqual([]);
    // The same socket, opened to others: the same unprivileged process reads it.
    await chmod(socket, 0o777);
    const ok = await runScript(join(repoRoot, 'test/integration/fixtures/podresources-as-nobody.ts'), [socket], {
      NODE_OPTIONS: `--experimental-transform-types --no-warnings --import ${join(repoRoot, 'test/helpers/ts-hooks.ts')}`,
    });
    expect(lastJson(ok.stdout)).toEqual({ rows: 0 });
    server.stop();
  });
});
