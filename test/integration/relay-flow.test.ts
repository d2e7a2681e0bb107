/**
 * The relay's flow: a slow target holds back the source's reads (nothing buffers without bound), and
 * PRE_COPY streams while the device runs, then carries on into STOP_COPY on the same data_fd.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Agent } from '../../src/agent/agent.js';
import type { AgentClient } from '../../src/agentapi/client.js';
import { newTicket } from '../../src/agent/identity.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { agentConfig, controllerClient, makePki, startAgent, until, type Pki } from '../helpers/agents.js';

const MiB = 2 ** 20;
let dir: string;
let pki: Pki;
let source: Agent;
let target: Agent;
let src: AgentClient;
let dst: AgentClient;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-flow-'));
  pki = await makePki(dir);
  source = await startAgent(await agentConfig(dir, pki, 'node-a', '127.0.0.2', [
    { name: 'big', stateSize: '128Mi' }, { name: 'live', stateSize: '8Mi', dirtyRate: '2Mi' },
  ]));
  target = await startAgent(await agentConfig(dir, pki, 'node-b', '127.0.0.3', [{ name: 'big', stateSize: '128Mi' }, { name: 'live', stateSize: '8Mi' }]));
  src = controllerClient(source, pki);
  dst = controllerClient(target, pki);
});
afterAll(async () => {
  src.close();
  dst.close();
  await source.stop();
  await target.stop();
  await rm(dir, { recursive: true, force: true });
});

it('a slow target slows the source: what is read but not yet written stays bounded by the windows', async () => {
  await writeFile(join(target.ctx.config.devices.simulated!.dir, 'big', 'faults.json'), JSON.stringify([{ stream: 'slow-write', bytesPerSecond: 8 * MiB }]));
  const ticket = newTicket();
  await dst.receive('big', { migration: 'slow', op: 'prepare', ticket, sourceNode: 'node-a' });
  await src.send('big', { migration: 'slow', op: 'send', ticket, target: { node: 'node-b', device: 'big', endpoint: target.endpoint } });
  await new Promise((r) => setTimeout(r, 3000));
  const sent = (await src.migration('slow')).sessions[0]!.bytes;
  const written = (await dst.migration('slow')).sessions[0]!.bytes;
  // 3 s at 8 MiB/s: ~24 MiB written. The source may run ahead by the HTTP/2 window (16 MiB), the
  // target's write buffers (4 MiB) and a few chunks in flight, never by the whole state.
  expect(written).toBeGreaterThan(12 * MiB);
  expect(written).toBeLessThan(40 * MiB);
  expect(sent - written).toBeLessThanOrEqual(28 * MiB);
  expect(sent).toBeLessThan(100 * MiB);
  await src.cancel('slow', { op: 'cancel' });
  await dst.cancel('slow', { op: 'cancel' });
});

it('PRE_COPY: streams while the device runs, then STOP_COPY on the same data_fd; the state moves exactly', async () => {
  const ticket = newTicket();
  await dst.receive('live', { migration: 'pre', op: 'prepare', ticket, sourceNode: 'node-a' });
  const send = await src.send('live', { migration: 'pre', op: 'send', ticket, precopy: true, target: { node: 'node-b', device: 'live', endpoint: target.endpoint } });
  expect(send.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>PRE_COPY']);
  // The initial bytes go first; the running workload keeps dirtying pages.
  const p = await until('initial bytes sent', async () => {
    const s = (await src.migration('pre')).sessions[0];
    return s?.precopy && s.precopy.initialBytes === 0 ? s : undefined;
  });
  expect(p.phase).toBe('Streaming');
  // Sent lags what the device produced by the chunks in flight (the read-ahead pool), so only > 0 here.
  expect(p.bytes).toBeGreaterThan(0);
  const stop = await src.setState('live', { migration: 'pre', op: 'stop-copy', state: 'STOP_COPY' });
  expect(stop.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['PRE_COPY>PRE_COPY_P2P', 'PRE_COPY_P2P>STOP_COPY']);
  const done = await until('verified', async () => {
    const s = (await src.migration('pre')).sessions[0];
    return s?.phase === 'Verified' ? s : undefined;
  });
  const final = await simDigest(source.ctx.config.devices.simulated!.dir, 'live');
  expect(final.state).toBe('STOP_COPY');
  await dst.commit('live', { migration: 'pre', op: 'commit' });
  await dst.setState('live', { migration: 'pre', op: 'run', state: 'RUNNING' });
  expect((await simDigest(target.ctx.config.devices.simulated!.dir, 'live')).sha256).toBe(final.sha256);
  expect(done.bytes).toBeGreaterThan(8 * MiB);
});

it('a target that refuses the stream half-way is reported with its reason, not as a broken link', async () => {
  // The source's driver corrupts byte 100: the target's device rejects the first batch it is given
  // and the target answers why while the source still has most of 128 MiB to send (4 MiB/s).
  for (const c of [src, dst]) await c.release('big', { migration: 'slow', op: 'release' }); // the first test's
  const faults = join(source.ctx.config.devices.simulated!.dir, 'big', 'faults.json');
  await writeFile(faults, JSON.stringify([{ stream: 'corrupt', atByte: 100 }]));
  try {
    const ticket = newTicket();
    await dst.receive('big', { migration: 'refused', op: 'prepare', ticket, sourceNode: 'node-a' });
    await src.send('big', { migration: 'refused', op: 'send', ticket, bandwidth: 4 * MiB, target: { node: 'node-b', device: 'big', endpoint: target.endpoint } });
    const s = await until('send failed', async () => {
      const x = (await src.migration('refused')).sessions[0];
      return x?.phase === 'Failed' ? x : undefined;
    });
    expect(s.allSent).toBe(false);
    expect(s.error).toMatchObject({ code: 'PeerRefused', message: expect.stringMatching(/refused the stream \(400\): writing the target data_fd failed: .*page 0 fails its CRC/) as unknown });
    await src.cancel('refused', { op: 'cancel' });
    await dst.cancel('refused', { op: 'cancel' });
  } finally {
    await rm(faults, { force: true });
  }
});
