/**
 * The agent is the authority on what each of its devices holds (DESIGN.md invariant 7): a record in
 * its journal that outlives restarts and every migration, refusals that say what to do, and the
 * only ways a device becomes free again, each a reset.
 */
import { join } from 'node:path';
import type { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig, ConfigError } from '../../src/agent/config.js';
import type { AgentClient } from '../../src/agentapi/client.js';
import { newTicket } from '../../src/agent/identity.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { agentConfig, controllerClient, startAgent, until, scratchWithPki } from '../helpers/agents.js';

const workdir = scratchWithPki('occupancy');
let source: Agent;
let target: Agent;
let src: AgentClient;
let dst: AgentClient;


beforeEach(async () => {
  const run = join(workdir.dir, `run-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`);
  source = await startAgent(await agentConfig(run, workdir.pki, 'node-a', '127.0.0.2', [{ name: 'sim-0' }, { name: 'sim-1' }]));
  // The target declares only sim-0 spare: sim-1, found at its first start, may hold a workload's state.
  target = await startAgent(await agentConfig(run, workdir.pki, 'node-b', '127.0.0.3', [{ name: 'sim-0' }, { name: 'sim-1' }], { spare: ['sim-0'] }));
  src = controllerClient(source, workdir.pki);
  dst = controllerClient(target, workdir.pki);
});
afterEach(async () => {
  src.close();
  dst.close();
  await source.stop();
  await target.stop();
});

const simDir = (a: Agent) => a.ctx.config.devices.simulated!.dir;

/** A whole migration of node-a/`from` onto node-b/`to`, committed, run and released on both sides. */
async function migrate(m: string, from = 'sim-0', to = 'sim-0'): Promise<string> {
  const ticket = newTicket();
  await dst.receive(to, { migration: m, op: 'prepare', ticket, sourceNode: 'node-a', commitOnVerify: { op: 'commit', resume: true } });
  await src.send(from, { migration: m, op: 'send', ticket, target: { node: 'node-b', device: to, endpoint: target.endpoint } });
  const s = await until(`${m} verified`, async () => (await src.migration(m, 2000)).sessions.find((x) => x.phase === 'Verified' || x.phase === 'Failed'));
  if (s.phase !== 'Verified') throw new Error(`${m}: ${s.error?.message}`);
  await dst.commit(to, { migration: m, op: 'commit', resume: true });
  await dst.release(to, { migration: m, op: 'release' });
  await src.release(from, { migration: m, op: 'release-stop', stop: true });
  return s.digest!;
}

async function restartTarget(): Promise<void> {
  const config = target.ctx.config;
  dst.close();
  await target.stop();
  target = await startAgent(config);
  dst = controllerClient(target, workdir.pki);
}

describe('what a device holds', () => {
  it('at first sight: free only if the config declares it spare; anything else is refused as a target, untouched', async () => {
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Free', reason: 'Spare' });
    expect((await dst.device('sim-1')).occupancy).toMatchObject({ state: 'Holding', reason: 'FoundInUse' });
    const before = await simDigest(simDir(target), 'sim-1');
    const refused = dst.receive('sim-1', { migration: 'm1', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' });
    await expect(refused).rejects.toMatchObject({ status: 409, code: 'DeviceOccupied' });
    await expect(refused).rejects.toThrow(/device sim-1 on node node-b was found in use when its agent first started .* pick another target device, or release this one first \(kubectl devmig release node-b\/sim-1, or a DeviceRelease\).*declare it spare in the agent's config \(devices.spare\)/);
    expect(await simDigest(simDir(target), 'sim-1')).toEqual(before);
    expect(await dst.device('sim-1')).not.toHaveProperty('migration');
    // A restart keeps the record: the config's spare list is read only for devices never seen.
    await restartTarget();
    expect((await dst.device('sim-1')).occupancy).toMatchObject({ state: 'Holding', reason: 'FoundInUse' });
  });

  it('a target holds the state from its commit on, through restarts, and receives nothing more; its source is free', async () => {
    const digest = await migrate('m1');
    const held = { state: 'Holding', reason: 'Migrated', migration: 'm1', digest };
    expect((await dst.device('sim-0')).occupancy).toMatchObject(held);
    expect((await src.device('sim-0')).occupancy).toMatchObject({ state: 'Free', reason: 'SourceReleased', migration: 'm1' });
    await restartTarget();
    expect((await dst.device('sim-0')).occupancy).toMatchObject(held);
    const before = await simDigest(simDir(target), 'sim-0');
    // Whatever the controller asks: the agent is the last line.
    await expect(dst.receive('sim-0', { migration: 'm2', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' }))
      .rejects.toThrow(/409 DeviceOccupied: device sim-0 on node node-b holds the state that migration m1 moved there \(digest blake3:[0-9a-f]{64}\) since .*release this one first/);
    expect(await simDigest(simDir(target), 'sim-0')).toEqual(before);
  });

  it('a target whose migration is cancelled is reset and free again', async () => {
    const before = await simDigest(simDir(target), 'sim-0');
    await dst.receive('sim-0', { migration: 'm3', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' });
    await dst.cancel('m3', { op: 'cancel' });
    const after = await simDigest(simDir(target), 'sim-0');
    expect(after.state).toBe('RUNNING');
    expect(after.generation).toBeGreaterThan(before.generation);
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Free', reason: 'RolledBack', migration: 'm3' });
  });
});

describe('a DeviceRelease, carried out by the agent', () => {
  it('waits for the migration that holds the device, then resets it and records it free, once', async () => {
    await dst.receive('sim-0', { migration: 'm4', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' });
    await expect(dst.free('sim-0', { op: 'free-1', release: 'r1' })).rejects.toMatchObject({ status: 409, code: 'DeviceBusy' });
    await dst.cancel('m4', { op: 'cancel' });
    await dst.release('sim-0', { migration: 'm4', op: 'release' });
    const digest = await migrate('m5');
    const before = await simDigest(simDir(target), 'sim-0');
    const r = await dst.free('sim-0', { op: 'free-2', release: 'r2', requestedBy: 'alice' });
    expect(r).toMatchObject({ freed: true, state: 'RUNNING', previous: { state: 'Holding', migration: 'm5', digest },
      occupancy: { state: 'Free', reason: 'Released', release: 'r2', releasedBy: 'alice' } });
    const reset = await simDigest(simDir(target), 'sim-0');
    expect(reset.sha256).not.toBe(before.sha256);
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Free', reason: 'Released', release: 'r2' });
    // Idempotent: the same release again answers what it did, and resets nothing more.
    expect(await dst.free('sim-0', { op: 'free-2', release: 'r2', requestedBy: 'alice' })).toEqual({ ...r, replayed: true });
    expect((await simDigest(simDir(target), 'sim-0')).generation).toBe(reset.generation);
    // Free again: it receives, and holds the new state.
    expect(await migrate('m6', 'sim-1')).toMatch(/^blake3:/);
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Holding', migration: 'm6' });
    // A later migration's release keeps the DeviceRelease's answer: a replay still resets nothing.
    expect(await dst.free('sim-0', { op: 'free-2', release: 'r2', requestedBy: 'alice' })).toEqual({ ...r, replayed: true });
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Holding', migration: 'm6' });
  });

  it('a device the kubelet gave to a pod is never a target, and is not released under the pod', async () => {
    target.ctx.allocations = { of: (d) => (d === 'sim-0' ? [{ namespace: 'vms', pod: 'vm-a', container: 'compute', resource: 'devmig.io/sim' }] : []), unknown: () => undefined };
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Allocated', reason: 'Spare', pods: [{ namespace: 'vms', pod: 'vm-a' }] });
    await expect(dst.receive('sim-0', { migration: 'm7', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' }))
      .rejects.toThrow(/409 DeviceOccupied: device sim-0 on node node-b is allocated by the kubelet to pod vms\/vm-a \(devmig.io\/sim\).*never a migration target/);
    await expect(dst.free('sim-0', { op: 'free-3', release: 'r3' })).rejects.toMatchObject({ status: 409, code: 'DeviceAllocated' });
    target.ctx.allocations = { of: () => [], unknown: () => undefined };
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Free' });
  });

  it.each([
    ['no release', { op: 'free-1' }, /release/],
    ['a bad release name', { op: 'free-1', release: 'R_1' }, /release/],
    ['an unknown field', { op: 'free-1', release: 'r1', force: true }, /force/],
    ['an empty requestedBy', { op: 'free-1', release: 'r1', requestedBy: '' }, /requestedBy/],
  ])('refuses %s, naming the field, and changes nothing', async (_what, body, why) => {
    const before = await simDigest(simDir(target), 'sim-1');
    const r = dst.call('POST', '/v1/devices/sim-1/free', body);
    await expect(r).rejects.toMatchObject({ status: 400 });
    await expect(r).rejects.toThrow(why);
    expect(await simDigest(simDir(target), 'sim-1')).toEqual(before);
  });
});

describe('the config', () => {
  it('refuses a spare device that is not a device name, naming the field', () => {
    const raw = { node: 'n', stateDir: '/tmp/x', tls: { ca: 'a', cert: 'b', key: 'c' }, devices: { spare: ['Sim_0'] } };
    expect(() => parseAgentConfig(raw)).toThrow(ConfigError);
    expect(() => parseAgentConfig(raw)).toThrow(/devices\.spare/);
  });
});

describe('the kubelet\'s allocations, read over the PodResources gRPC API', () => {
  it('nothing is received while they are unknown; a device a pod has is never a target; a kubelet gone keeps the last answer', async () => {
    const { FakePodResources } = await import('../helpers/podresources-server.js');
    const socket = join(workdir.dir, `pr-${Date.now()}.sock`);
    const run = join(workdir.dir, `kubelet-${Date.now()}`);
    const agent = await startAgent(await agentConfig(run, workdir.pki, 'node-c', '127.0.0.4', [{ name: 'sim-0' }, { name: 'sim-1' }],
      { podResources: { socket, intervalSeconds: 0.2, timeoutSeconds: 1, resources: { 'devmig.io/sim': 'name' } } }));
    const c = controllerClient(agent, workdir.pki);
    try {
      // No kubelet answers yet: the agent cannot tell, so it gives nothing away.
      await expect(c.receive('sim-0', { migration: 'm8', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' }))
        .rejects.toThrow(/503 PodResourcesUnavailable: cannot receive onto device sim-0: whether the kubelet gave it to a pod is not known \(the kubelet's PodResources API: .*\); ask again/);
      const kubelet = await FakePodResources.start(socket);
      kubelet.list = { podResources: [{ name: 'vm-a', namespace: 'vms', containers: [{ name: 'compute', devices: [{ resourceName: 'devmig.io/sim', deviceIds: ['sim-1'] }], dynamicResources: [] }] }] };
      const allocated = await until('sim-1 allocated', async () => {
        const o = (await c.device('sim-1')).occupancy;
        return o?.state === 'Allocated' ? o : undefined;
      });
      expect(allocated.pods).toEqual([{ namespace: 'vms', pod: 'vm-a', container: 'compute', resource: 'devmig.io/sim' }]);
      await expect(c.receive('sim-1', { migration: 'm8', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' })).rejects.toMatchObject({ status: 409, code: 'DeviceOccupied' });
      await expect(c.receive('sim-0', { migration: 'm9', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' })).resolves.toMatchObject({ state: 'RESUMING' });
      // The kubelet goes away: what it said last still holds.
      kubelet.stop();
      await new Promise((r) => setTimeout(r, 600));
      expect((await c.device('sim-1')).occupancy).toMatchObject({ state: 'Allocated' });
    } finally {
      c.close();
      await agent.stop();
    }
  });

  it('refuses a podResources mapping that names no device, naming the field', () => {
    const raw = { node: 'n', stateDir: '/tmp/x', tls: { ca: 'a', cert: 'b', key: 'c' }, podResources: { resources: { 'devmig.io/sim': 'serial' } } };
    expect(() => parseAgentConfig(raw)).toThrow(/podResources\.resources/);
  });
});
