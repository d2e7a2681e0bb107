/**
 * The test device plugin against a kubelet's side of the protocol in real gRPC over unix sockets:
 * it registers (version, endpoint, resource name), advertises its devices as Healthy through
 * ListAndWatch, answers Allocate with one empty response per container, and registers again with
 * a restarted kubelet that wiped its socket. The process form exits as its usage says.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestDevicePlugin } from '../../src/kubelet/deviceplugin.js';
import type { ListAndWatchResponse } from '../../src/kubelet/deviceplugin-api.js';
import { repoRoot, runScript } from '../helpers/cli.js';
import { FakeKubelet, PluginClient } from '../helpers/fake-kubelet.js';

let dir: string;
let kubelet: FakeKubelet | undefined;
let plugin: TestDevicePlugin | undefined;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-dp-'));
});

afterEach(async () => {
  await plugin?.stop();
  await kubelet?.stop();
  plugin = undefined;
  kubelet = undefined;
  await rm(dir, { recursive: true, force: true });
});

function firstList(client: PluginClient): Promise<ListAndWatchResponse> {
  const stream = client.listAndWatch();
  return new Promise((resolve, reject) => {
    stream.once('data', (r: ListAndWatchResponse) => { resolve(r); stream.cancel(); });
    stream.once('error', (e: Error & { code?: number }) => { if (e.code !== 1) reject(e); }); // 1: CANCELLED, ours
  });
}

it('registers, advertises its devices as Healthy, and answers the kubelet\'s calls', async () => {
  kubelet = await FakeKubelet.start(dir);
  const registered = kubelet.nextRegistration();
  plugin = await new TestDevicePlugin({ dir, resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1'] }).start();
  expect(await registered).toEqual({
    version: 'v1beta1', endpoint: 'devmig.io-sim.sock', resourceName: 'devmig.io/sim',
    options: { preStartRequired: false, getPreferredAllocationAvailable: false },
  });
  expect(plugin.registrations).toBe(1);
  // The kubelet reached the plugin's socket before it answered the registration.
  expect(kubelet.options).toEqual([{ preStartRequired: false, getPreferredAllocationAvailable: false }]);

  const c = new PluginClient(join(dir, 'devmig.io-sim.sock'));
  expect(await firstList(c)).toEqual({ devices: [{ id: 'sim-0', health: 'Healthy' }, { id: 'sim-1', health: 'Healthy' }] });
  expect(await c.allocate([['sim-1'], ['sim-0']])).toEqual({ containerResponses: [{}, {}] });
  expect(await c.preferred(['sim-0', 'sim-1'], ['sim-1'], 1)).toEqual({ containerResponses: [{ deviceIds: ['sim-1'] }] });
  expect(await c.preStart(['sim-0'])).toEqual({});
  await expect(c.allocate([['sim-0', 'gpu-7']])).rejects.toMatchObject({ code: 3, details: expect.stringMatching(/devmig.io\/sim has no device "gpu-7"/) as unknown });
  c.close();
});

it('holds ListAndWatch open until it stops, then ends it and removes its socket', async () => {
  kubelet = await FakeKubelet.start(dir);
  plugin = await new TestDevicePlugin({ dir, resourceName: 'devmig.io/sim', deviceIds: ['sim-0'] }).start();
  const c = new PluginClient(plugin.socket);
  const stream = c.listAndWatch();
  const updates: ListAndWatchResponse[] = [];
  stream.on('data', (r: ListAndWatchResponse) => updates.push(r));
  const ended = new Promise<string>((resolve) => {
    stream.on('end', () => resolve('end'));
    stream.on('error', (e: Error) => resolve(`error: ${e.message}`));
  });
  await new Promise((r) => setTimeout(r, 300));
  expect(updates).toHaveLength(1);
  await plugin.stop();
  expect(await ended).toBe('end');
  expect(existsSync(plugin.socket)).toBe(false);
  plugin = undefined;
  c.close();
});

it('waits for a kubelet that is not there yet, and registers when it comes', async () => {
  plugin = await new TestDevicePlugin({ dir, resourceName: 'devmig.io/sim', deviceIds: ['sim-0'], checkIntervalMs: 100 }).start();
  expect(plugin.registrations).toBe(0);
  kubelet = await FakeKubelet.start(dir);
  const [n] = await once(plugin, 'registered') as [number];
  expect(n).toBe(1);
  expect(kubelet.requests.map((r) => r.resourceName)).toEqual(['devmig.io/sim']);
});

it('registers again with a restarted kubelet, which wiped the plugin\'s socket', async () => {
  kubelet = await FakeKubelet.start(dir);
  plugin = await new TestDevicePlugin({ dir, resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-1'], checkIntervalMs: 200 }).start();
  expect(plugin.registrations).toBe(1);
  await kubelet.stop();
  // A starting kubelet removes everything in the directory, the plugin's socket too, then serves kubelet.sock anew.
  const again = once(plugin, 'registered');
  kubelet = await FakeKubelet.start(dir);
  expect(await again).toEqual([2]);
  // The fake kubelet, as the real one, answered only after it reached the plugin's socket: the
  // plugin served it anew after the wipe.
  expect(kubelet.options).toHaveLength(1);
  expect(kubelet.requests).toHaveLength(1);
  const c = new PluginClient(plugin.socket);
  expect(await firstList(c)).toEqual({ devices: [{ id: 'sim-0', health: 'Healthy' }, { id: 'sim-1', health: 'Healthy' }] });
  c.close();
});

it('a refused registration is reported, and not retried against the same kubelet', async () => {
  kubelet = await FakeKubelet.start(dir);
  kubelet.refuse = 'unsupported API version';
  plugin = new TestDevicePlugin({ dir, resourceName: 'devmig.io/sim', deviceIds: ['sim-0'], checkIntervalMs: 50 });
  const rejected = once(plugin, 'rejected') as Promise<[Error]>;
  await plugin.start();
  const [e] = await rejected;
  expect(e.message).toMatch(/kubelet on .*kubelet.sock refused devmig.io\/sim: unsupported API version/);
  kubelet.refuse = undefined;
  await new Promise((r) => setTimeout(r, 300));
  expect(kubelet.requests).toHaveLength(0);
  expect(plugin.registrations).toBe(0);
});

it.each([
  [{ resourceName: 'sim', deviceIds: ['sim-0'] }, /resource name "sim" is not an extended resource name/],
  [{ resourceName: 'kubernetes.io/sim', deviceIds: ['sim-0'] }, /not an extended resource name/],
  [{ resourceName: 'devmig.io/sim', deviceIds: [] }, /at least one/],
  [{ resourceName: 'devmig.io/sim', deviceIds: ['sim-0', 'sim-0'] }, /"sim-0" is listed twice/],
  [{ resourceName: 'devmig.io/sim', deviceIds: ['sim 0'] }, /device ID "sim 0"/],
  [{ resourceName: 'devmig.io/sim', deviceIds: ['sim-0'], endpoint: '../x.sock' }, /endpoint "..\/x.sock" must be a socket file name/],
])('refuses bad options %j', (opts, message) => {
  expect(() => new TestDevicePlugin({ dir, ...opts })).toThrow(message);
});

describe('as a process (dist/tools/device-plugin.js, built by npm test)', () => {
  const script = join(repoRoot, 'dist/tools/device-plugin.js');

  it('prints a line per registration and exits 0 on SIGTERM, its socket gone', async () => {
    kubelet = await FakeKubelet.start(dir);
    const child = spawn(process.execPath, [script, '--dir', dir, '--resource', 'devmig.io/sim', '--devices', 'sim-0,sim-1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const [line] = await once(child.stdout, 'data') as [Buffer];
    expect(JSON.parse(line.toString())).toEqual({ registered: 1, resourceName: 'devmig.io/sim', socket: join(dir, 'devmig.io-sim.sock') });
    expect(kubelet.requests.map((r) => r.endpoint)).toEqual(['devmig.io-sim.sock']);
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit') as [number];
    expect([code, stderr.includes('"level":50')]).toEqual([0, false]);
    expect(existsSync(join(dir, 'devmig.io-sim.sock'))).toBe(false);
  });

  it('exits 1 when the kubelet refuses it, and 2 on bad arguments', async () => {
    kubelet = await FakeKubelet.start(dir);
    kubelet.refuse = 'resource name already taken';
    const refused = await runScript(script, ['--dir', dir, '--devices', 'sim-0']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/device-plugin: the kubelet on .* refused devmig.io\/sim: resource name already taken/);
    const noDevices = await runScript(script, ['--dir', dir]);
    expect([noDevices.code, noDevices.stderr]).toEqual([2, expect.stringContaining('--devices is required') as unknown]);
    const badName = await runScript(script, ['--dir', dir, '--resource', 'sim', '--devices', 'sim-0']);
    expect([badName.code, badName.stderr]).toEqual([2, expect.stringContaining('is not an extended resource name') as unknown]);
  });
});
