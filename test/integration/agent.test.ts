import { connect } from 'node:http2';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Agent } from '../../src/agent/agent.js';
import { AgentCallError, type AgentClient } from '../../src/agentapi/client.js';
import { newTicket } from '../../src/agent/identity.js';
import { clientOptions } from '../../src/relay/h2.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { agentConfig, controllerClient, startAgent, until, scratchWithPki, type Pki } from '../helpers/agents.js';

const workdir = scratchWithPki('agent');
let source: Agent;
let target: Agent;
let src: AgentClient;
let dst: AgentClient;


beforeEach(async () => {
  const run = join(workdir.dir, `run-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`);
  source = await startAgent(await agentConfig(run, workdir.pki, 'node-a', '127.0.0.2', [{ name: 'sim-0' }, { name: 'sim-1', stateSize: '16Mi' }]));
  target = await startAgent(await agentConfig(run, workdir.pki, 'node-b', '127.0.0.3', [{ name: 'sim-0' }, { name: 'sim-1', stateSize: '16Mi' }]));
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

async function migrate(m: string, device = 'sim-0', extra: Record<string, unknown> = {}) {
  const ticket = newTicket();
  const prep = await dst.receive(device, { migration: m, op: 'prepare', ticket, sourceNode: 'node-a' });
  const send = await src.send(device, { migration: m, op: 'send', ticket, target: { node: 'node-b', device, endpoint: target.endpoint }, ...extra });
  return { ticket, prep, send };
}

/**
 * Restarts the target agent, as after a crash: with `step`, its journal of sim-0 first says that step
 * and has no op records; `meanwhile` runs while no agent is up.
 */
async function restartTarget(step?: string, meanwhile?: () => Promise<void>) {
  const config = target.ctx.config;
  dst.close();
  await target.stop();
  if (step) {
    const file = join(config.stateDir, 'journal', 'sim-0.json');
    const onDisk = JSON.parse(await readFile(file, 'utf8')) as object;
    await writeFile(file, JSON.stringify({ ...onDisk, step, ops: {} }));
  }
  await meanwhile?.();
  target = await startAgent(config);
  dst = controllerClient(target, workdir.pki);
}

async function verified(m: string) {
  return until(`${m} verified`, async () => {
    const v = await src.migration(m);
    const s = v.sessions[0];
    if (s?.phase === 'Failed') throw new Error(`send failed: ${s.error?.message}`);
    return s?.phase === 'Verified' ? s : undefined;
  });
}

describe('agent: a migration through the control API', () => {
  it('moves a device exactly and records every arc', async () => {
    const before = await simDigest(simDir(source), 'sim-0');
    const { prep, send } = await migrate('m1');
    expect(prep.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>RESUMING']);
    expect(send.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY']);
    const s = await verified('m1');
    expect(s.bytes).toBeGreaterThan(4 * 2 ** 20);
    expect(s.digest).toMatch(/^blake3:[0-9a-f]{64}$/); // the default digest
    const c = await dst.commit('sim-0', { migration: 'm1', op: 'commit' });
    expect(c.arcs).toEqual([expect.objectContaining({ from: 'RESUMING', to: 'STOP', result: 'Succeeded' })]);
    expect(c.digest).toBe(s.digest);
    const run = await dst.setState('sim-0', { migration: 'm1', op: 'run', state: 'RUNNING' });
    expect(run.state).toBe('RUNNING');
    expect((await simDigest(simDir(target), 'sim-0')).sha256).toBe(before.sha256);
    expect((await dst.device('sim-0'))).toMatchObject({ migration: 'm1', role: 'target', step: 'state:RUNNING' });
    await dst.release('sim-0', { migration: 'm1', op: 'release' });
    expect((await dst.device('sim-0')).migration).toBeUndefined();
    // The target holds the workload's state now, recorded with its commit; it survives the release.
    expect((await dst.device('sim-0')).occupancy).toMatchObject({ state: 'Holding', reason: 'Migrated', migration: 'm1', digest: s.digest });
    // The source: to STOP, reset (no copy of the state stays behind) and released in one op, its
    // answer and its new occupancy (free) in the release's one journal write.
    let writes = 0;
    const update = source.ctx.journal.release.bind(source.ctx.journal);
    source.ctx.journal.release = async (...args) => { writes++; return update(...args); };
    const rs = await src.release('sim-0', { migration: 'm1', op: 'release-stop', stop: true });
    expect(rs).toMatchObject({ released: true, reset: true, state: 'RUNNING' });
    expect(rs.arcs?.map((a) => `${a.from}>${a.to}:${a.result}`)).toEqual(['STOP_COPY>STOP:Succeeded']);
    expect(writes).toBe(1);
    expect(await src.device('sim-0')).toMatchObject({ state: 'RUNNING', step: 'released:m1', occupancy: { state: 'Free', reason: 'SourceReleased', migration: 'm1' } });
    expect((await simDigest(simDir(source), 'sim-0')).sha256).not.toBe(before.sha256);
    expect((await src.device('sim-0')).migration).toBeUndefined();
    expect(await src.release('sim-0', { migration: 'm1', op: 'release-stop', stop: true })).toEqual({ ...rs, replayed: true });
  });

  it('commits and runs in one op when asked (resume), and a replay answers the same', async () => {
    const before = await simDigest(simDir(source), 'sim-0');
    await migrate('m1r');
    await src.migration('m1r', 2000);
    const req = { migration: 'm1r', op: 'commit', resume: true };
    // The commit's intent is on record since the device entered RESUMING (receive:waiting; here the
    // journal already says receive:verified): the op itself writes nothing before its arcs (every
    // write there is downtime), only its answer after.
    const steps: string[] = [];
    const step = target.ctx.journal.step.bind(target.ctx.journal);
    target.ctx.journal.step = async (device, change) => { steps.push(change.step ?? ''); return step(device, change); };
    await target.ctx.journal.settled('sim-0');
    expect(target.ctx.journal.get('sim-0').step).toBe('receive:verified');
    const c = await dst.commit('sim-0', req);
    expect(steps).toEqual([]);
    expect(c.arcs.map((a) => `${a.from}>${a.to}:${a.result}`)).toEqual(['RESUMING>STOP:Succeeded', 'STOP>RUNNING_P2P:Succeeded', 'RUNNING_P2P>RUNNING:Succeeded']);
    expect(c.state).toBe('RUNNING');
    expect(await dst.commit('sim-0', req)).toEqual({ ...c, replayed: true });
    expect(await simDigest(simDir(target), 'sim-0')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
    expect(await dst.device('sim-0')).toMatchObject({ migration: 'm1r', step: 'state:RUNNING' });
    // The agent died after the device ran, before it recorded the answer: the journal still says
    // receive:verified (nothing is written between the commit and the run, which is downtime), the
    // device says RUNNING, and a replay must answer committed, never NotVerified (the controller
    // would roll back a target that runs).
    const entry = target.ctx.journal.get('sim-0');
    delete (entry.ops as Record<string, unknown>)['m1r/commit'];
    entry.step = 'receive:verified';
    await expect(dst.commit('sim-0', req)).resolves.toMatchObject({ state: 'RUNNING', recovered: true, arcs: [] });
    // The same journal read by a restarted agent: the device's RUNNING settles it as committed and run
    // (before, a verified or commit:intent target in anything but STOP was taken for uncommitted).
    await restartTarget('receive:verified');
    expect(await dst.device('sim-0')).toMatchObject({ migration: 'm1r', role: 'target', step: 'state:RUNNING', state: 'RUNNING' });
    await expect(dst.commit('sim-0', req)).resolves.toMatchObject({ state: 'RUNNING', recovered: true, arcs: [] });
    // Now the agent and whatever kept the device open died between the verdict and the commit arc:
    // the device (still RESUMING) was reset on its last close and comes back RUNNING, empty. That
    // RUNNING is no commit: the replay must refuse, so the controller rolls back to the source.
    const meta = join(simDir(target), 'sim-0', 'device.json');
    await restartTarget('receive:verified', async () =>
      writeFile(meta, JSON.stringify({ ...(JSON.parse(await readFile(meta, 'utf8')) as object), state: 'RESUMING' })));
    expect(await dst.device('sim-0')).toMatchObject({ migration: 'm1r', step: 'receive:verified>reset', state: 'RUNNING' });
    await expect(dst.commit('sim-0', req)).rejects.toMatchObject({ code: 'NotVerified' });
  });

  it('an armed target commits and runs the moment its stream is verified; the commit op then answers what it did', async () => {
    const before = await simDigest(simDir(source), 'sim-0');
    const req = { migration: 'ma', op: 'commit', resume: true };
    // Steps the target journals from the send on, with the device's state at each: nothing is written
    // between the verdict and the commit's arcs (receive:waiting, on record before RESUMING was
    // reported, is the intent; every write there would be downtime).
    const seen: Array<[string, string]> = [];
    const dev = target.ctx.devices.get('sim-0')!.device;
    const step = target.ctx.journal.step.bind(target.ctx.journal);
    const ticket = newTicket();
    await dst.receive('sim-0', { migration: 'ma', op: 'prepare', ticket, sourceNode: 'node-a', commitOnVerify: { op: 'commit', resume: true } });
    target.ctx.journal.step = async (device, change) => { seen.push([change.step ?? '', await dev.getState()]); return step(device, change); };
    await src.send('sim-0', { migration: 'ma', op: 'send', ticket, target: { node: 'node-b', device: 'sim-0', endpoint: target.endpoint } });
    // Nobody asks the target to commit: it runs on its own.
    const ran = await until('the armed target to run', async () => ((await dst.device('sim-0')).step === 'state:RUNNING' ? true : undefined));
    expect(ran).toBe(true);
    expect(seen.filter(([x]) => x.startsWith('commit'))).toEqual([]);
    expect(await simDigest(simDir(target), 'sim-0')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
    const c = await dst.commit('sim-0', req);
    expect(c).toMatchObject({ replayed: true, state: 'RUNNING' });
    expect(c.arcs.map((a) => `${a.from}>${a.to}:${a.result}`)).toEqual(['RESUMING>STOP:Succeeded', 'STOP>RUNNING_P2P:Succeeded', 'RUNNING_P2P>RUNNING:Succeeded']);
    // Another op id, or other parameters, is no repeat of it: refused.
    await expect(dst.commit('sim-0', { migration: 'ma', op: 'commit' })).rejects.toMatchObject({ status: 409, code: 'OpConflict' });
    // The target is the runner: a rollback that comes now is refused, and changes nothing.
    await expect(dst.cancel('ma', { op: 'cancel' })).rejects.toMatchObject({ status: 409, code: 'AlreadyCommitted' });
    expect(await simDigest(simDir(target), 'sim-0')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
    // So too after a restart that lost the session and the commit's record: the journal still at
    // receive:waiting (the armed commit writes nothing before its arcs), the device RUNNING.
    await restartTarget('receive:waiting');
    expect(await dst.device('sim-0')).toMatchObject({ migration: 'ma', role: 'target', step: 'state:RUNNING', state: 'RUNNING' });
    expect((await dst.migration('ma')).sessions).toEqual([expect.objectContaining({ device: 'sim-0', role: 'target', phase: 'Committed' })]);
    await expect(dst.cancel('ma', { op: 'cancel' })).rejects.toMatchObject({ status: 409, code: 'AlreadyCommitted' });
    // And the source, asked to cancel with every byte sent, asks the target, which says committed.
    await expect(src.cancel('ma', { op: 'cancel' })).rejects.toMatchObject({ status: 409, code: 'OutcomeUnknown' });
    expect((await src.device('sim-0')).state).toBe('STOP_COPY');
  });

  it('a cancel reaches a target whose session died with its agent, and does not take its RUNNING for a commit', async () => {
    await migrate('mz');
    await verified('mz');
    await target.ctx.journal.settled('sim-0');
    // No fd holder here: the device was reset as the agent closed it, and comes back RUNNING, empty.
    await restartTarget();
    expect(await dst.device('sim-0')).toMatchObject({ migration: 'mz', state: 'RUNNING', step: 'receive:verified>reset' });
    const tc = await dst.cancel('mz', { op: 'cancel' });
    expect(tc.devices).toEqual([expect.objectContaining({ device: 'sim-0', role: 'target', state: 'RUNNING' })]);
    expect(await dst.device('sim-0')).toMatchObject({ migration: 'mz', step: 'cancelled' });
  });

  it('a reset ends a verified session: no commit follows it', async () => {
    await migrate('mx');
    await verified('mx');
    await dst.reset('sim-0', { migration: 'mx', op: 'reset' });
    await expect(dst.commit('sim-0', { migration: 'mx', op: 'commit' })).rejects.toMatchObject({ status: 409, code: 'NotVerified' });
    expect((await dst.device('sim-0')).state).toBe('RUNNING');
  });

  it('only the commit takes a device out of RESUMING: the state op refuses, and changes nothing', async () => {
    await migrate('mr');
    await verified('mr');
    await target.ctx.journal.settled('sim-0');
    await expect(dst.setState('sim-0', { migration: 'mr', op: 'run', state: 'RUNNING' })).rejects.toMatchObject({ status: 409, code: 'UseCommit' });
    expect(await dst.device('sim-0')).toMatchObject({ state: 'RESUMING', step: 'receive:verified' });
    await expect(dst.commit('sim-0', { migration: 'mr', op: 'commit' })).resolves.toMatchObject({ state: 'STOP' });
  });

  it('the same op asked twice at once runs once, and both get its answer', async () => {
    await migrate('mc');
    await verified('mc');
    const req = { migration: 'mc', op: 'commit', resume: true };
    const [a, b] = await Promise.all([dst.commit('sim-0', req), dst.commit('sim-0', req)]);
    const arcs = ['RESUMING>STOP', 'STOP>RUNNING_P2P', 'RUNNING_P2P>RUNNING'];
    expect(a.arcs.map((x) => `${x.from}>${x.to}`)).toEqual(arcs);
    expect(b.arcs).toEqual(a.arcs);
    expect([a.replayed, b.replayed].filter(Boolean)).toHaveLength(1);
  });

  it('a target agent that cannot be reached fails the send before the device stops', async () => {
    const ticket = newTicket();
    const r = await src.send('sim-0', { migration: 'm1u', op: 'send', ticket, target: { node: 'node-b', device: 'sim-0', endpoint: 'https://127.0.0.9:1' } })
      .catch((e: unknown) => e as AgentCallError);
    expect(r).toBeInstanceOf(AgentCallError);
    expect(r).toMatchObject({ status: 424, code: 'PeerUnreachable', message: expect.stringMatching(/cannot reach the target agent at https:\/\/127.0.0.9:1.*the device was not stopped \(RUNNING\)/) as unknown });
    expect(await simDigest(simDir(source), 'sim-0')).toMatchObject({ state: 'RUNNING' });
  });

  it('repeating an op returns the recorded result; the same op with other parameters is refused', async () => {
    const ticket = newTicket();
    const req = { migration: 'm2', op: 'prepare', ticket, sourceNode: 'node-a' };
    const first = await dst.receive('sim-0', req);
    const again = await dst.receive('sim-0', req);
    expect(again).toEqual({ ...first, replayed: true });
    await expect(dst.receive('sim-0', { ...req, sourceNode: 'node-c' })).rejects.toMatchObject({ status: 409, code: 'OpConflict' });
    await expect(dst.receive('sim-0', { ...req, migration: 'other', op: 'prepare' })).rejects.toMatchObject({ status: 409, code: 'DeviceBusy' });
  });

  it('refuses to commit a stream that was never verified', async () => {
    await dst.receive('sim-0', { migration: 'm3', op: 'prepare', ticket: newTicket(), sourceNode: 'node-a' });
    await expect(dst.commit('sim-0', { migration: 'm3', op: 'commit' })).rejects.toMatchObject({ status: 409, code: 'NotVerified' });
    expect((await dst.device('sim-0')).state).toBe('RESUMING');
  });

  it('honours the bandwidth limit', async () => {
    const started = Date.now();
    await migrate('m4', 'sim-0', { bandwidth: 4 * 2 ** 20 });
    await verified('m4');
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  });

  it('a long poll (?wait=) answers the moment the stream is verified, and refuses a bad wait', async () => {
    // 4 MiB at 8 MiB/s: the stream takes about half a second.
    await migrate('m4w', 'sim-0', { bandwidth: 8 * 2 ** 20 });
    const asked = Date.now();
    const v = await src.migration('m4w', 2000);
    const waited = Date.now() - asked;
    expect(v.sessions[0]?.phase).toBe('Verified');
    expect(waited).toBeGreaterThanOrEqual(200);
    expect(waited).toBeLessThan(1500);
    // Nothing left to wait for: at once.
    const again = Date.now();
    await src.migration('m4w', 2000);
    expect(Date.now() - again).toBeLessThan(200);
    for (const [query, why] of [['wait=3000', /wait "3000": a whole number of milliseconds from 0 to 2000/], ['wait=-1', /wait "-1"/], ['wait=1e3', /wait "1e3"/],
      ['timeout=5', /query parameter "timeout" is unknown; the only one is wait/]] as const) {
      await expect(src.call('GET', `/v1/migrations/m4w?${query}`)).rejects.toMatchObject({ status: 400, message: expect.stringMatching(why) as unknown });
    }
  });

  it('cancel on the source mid-stream brings it back RUNNING and fails the target session', async () => {
    const before = await simDigest(simDir(source), 'sim-1');
    await migrate('m5', 'sim-1', { bandwidth: 2 * 2 ** 20 });
    await until('streaming', async () => ((await src.migration('m5')).sessions[0]?.bytes ?? 0) > 0);
    // A stream that runs on is in the target's journal as such (a short one goes straight to verified).
    await until('receive:streaming journaled', async () => (await dst.device('sim-1')).step === 'receive:streaming');
    const c = await src.cancel('m5', { op: 'cancel', reason: 'test' });
    expect(c.devices).toEqual([expect.objectContaining({ device: 'sim-1', role: 'source', state: 'RUNNING' })]);
    expect((await src.migration('m5')).sessions[0]?.phase).toBe('Cancelled');
    expect((await simDigest(simDir(source), 'sim-1')).sha256).toBe(before.sha256);
    const t = await until('target failed', async () => {
      const s = (await dst.migration('m5')).sessions[0];
      return s && s.phase !== 'Waiting' && s.phase !== 'Streaming' ? s : undefined;
    });
    expect(t.phase).toBe('Failed');
    const tc = await dst.cancel('m5', { op: 'cancel' });
    expect(tc.devices).toEqual([expect.objectContaining({ device: 'sim-1', role: 'target', state: 'RUNNING' })]);
  });

  it('cancelling a verified target journals before it resets the device, and a reset op does too', async () => {
    await migrate('m5v');
    await verified('m5v');
    await target.ctx.journal.settled('sim-0');
    // A verified target found RUNNING reads as committed (hasCommitted): a crash between the reset and
    // its record must not leave exactly that, so the record comes first, while the device is RESUMING.
    const seen: Array<[string, string]> = [];
    const step = target.ctx.journal.step.bind(target.ctx.journal);
    const dev = target.ctx.devices.get('sim-0')!.device;
    target.ctx.journal.step = async (device, change) => { seen.push([change.step ?? '', await dev.getState()]); return step(device, change); };
    const tc = await dst.cancel('m5v', { op: 'cancel' });
    expect(tc.devices).toEqual([expect.objectContaining({ device: 'sim-0', role: 'target', state: 'RUNNING' })]);
    expect(seen).toEqual([['cancel:reset', 'RESUMING'], ['cancelled', 'RUNNING']]);
    // The session was verified: after the cancel no commit may walk the reset device to STOP.
    await expect(dst.commit('sim-0', { migration: 'm5v', op: 'commit' })).rejects.toMatchObject({ status: 409, code: 'NotVerified' });
    expect((await dst.device('sim-0')).state).toBe('RUNNING');
    seen.length = 0;
    await dst.reset('sim-0', { migration: 'm5v', op: 'reset' });
    expect(seen.map(([x]) => x)).toEqual(['reset:intent', 'reset']);
  });

  it('takes a commit back (a group rolling back) only while the target never ran; then the source may run', async () => {
    const before = await simDigest(simDir(source), 'sim-0');
    await migrate('g1');
    await verified('g1');
    await expect(dst.uncommit('sim-0', { migration: 'g1', op: 'uncommit-early' })).resolves.toMatchObject({ uncommitted: false, phase: 'Verified' });
    await dst.commit('sim-0', { migration: 'g1', op: 'commit' });
    // Committed: the source refuses to run again, the target is the runner.
    await expect(src.cancel('g1', { op: 'cancel-1' })).rejects.toMatchObject({ status: 409, code: 'OutcomeUnknown', message: expect.stringMatching(/which committed it/) as unknown });
    const u = await dst.uncommit('sim-0', { migration: 'g1', op: 'uncommit' });
    expect(u).toMatchObject({ uncommitted: true, state: 'RUNNING' });
    expect((await dst.migration('g1')).sessions[0]).toMatchObject({ phase: 'Cancelled', error: { code: 'Uncommitted' } });
    // The source's cancel asks the target, which no longer holds a commit: the source runs its own state.
    const c = await src.cancel('g1', { op: 'cancel-2' });
    expect(c.devices).toEqual([expect.objectContaining({ role: 'source', state: 'RUNNING' })]);
    expect(await simDigest(simDir(source), 'sim-0')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });

    await migrate('g2', 'sim-1');
    await verified('g2');
    await dst.commit('sim-1', { migration: 'g2', op: 'commit' });
    await dst.setState('sim-1', { migration: 'g2', op: 'run-p2p', state: 'RUNNING_P2P' });
    await expect(dst.uncommit('sim-1', { migration: 'g2', op: 'uncommit' })).rejects.toMatchObject({ status: 409, code: 'TargetRan' });
    await expect(dst.uncommit('sim-0', { migration: 'nope', op: 'uncommit' })).rejects.toMatchObject({ status: 409 });
  });

  it('drains: readiness fails and new work gets 503', async () => {
    const draining = source.stop();
    source.ctx.draining = true;
    await draining;
    source = await startAgent(source.ctx.config);
    src.close();
    src = controllerClient(source, workdir.pki);
    source.ctx.draining = true;
    await expect(src.ready()).rejects.toMatchObject({ status: 503 });
    await expect(src.setState('sim-0', { migration: 'm6', op: 'x', state: 'STOP' })).rejects.toMatchObject({ status: 503, code: 'Draining' });
    expect((await src.device('sim-0')).state).toBe('RUNNING');
    source.ctx.draining = false;
  });
});

describe('agent: bad input changes nothing', () => {
  async function raw(path: string, body: string | Buffer, headers: Record<string, string> = {}) {
    const s = connect(source.endpoint, clientOptions(workdir.pki.controller, 'node-a'));
    s.on('error', () => undefined);
    const req = s.request({ ':method': 'POST', ':path': path, 'content-type': 'application/json', ...headers });
    req.end(body);
    const [h] = (await once(req, 'response')) as [Record<string, string>];
    let text = '';
    for await (const c of req) text += String(c);
    s.close();
    return { status: Number(h[':status']), body: JSON.parse(text) as { error: { code: string; message: string } } };
  }

  it.each([
    ['an unknown field', '/v1/devices/sim-0/state', { migration: 'm', op: 'a', state: 'STOP', force: true }, 400, /force/],
    ['a wrong type', '/v1/devices/sim-0/state', { migration: 'm', op: 'a', state: 7 }, 400, /state/],
    ['an unknown state', '/v1/devices/sim-0/state', { migration: 'm', op: 'a', state: 'PAUSED' }, 400, /state/],
    ['a bad migration name', '/v1/devices/sim-0/state', { migration: 'M_1', op: 'a', state: 'STOP' }, 400, /migration/],
    ['an unknown device', '/v1/devices/sim-9/state', { migration: 'm', op: 'a', state: 'STOP' }, 404, /no device "sim-9".*sim-0, sim-1/],
    ['path traversal', '/v1/devices/..%2F..%2Fetc/state', { migration: 'm', op: 'a', state: 'STOP' }, 400, /lowercase DNS name/],
    ['a bad ticket', '/v1/devices/sim-0/receive', { migration: 'm', op: 'a', ticket: 'short', sourceNode: 'node-a' }, 400, /ticket/],
    ['a commit whose resume is not a boolean', '/v1/devices/sim-0/commit', { migration: 'm', op: 'a', resume: 'yes' }, 400, /resume/],
    ['an armed commit with a bad op id', '/v1/devices/sim-0/receive',
      { migration: 'm', op: 'a', ticket: 'A'.repeat(43), sourceNode: 'node-a', commitOnVerify: { op: 'Commit Now', resume: true } }, 400, /commitOnVerify\.op/],
    ['an armed commit with an unknown field', '/v1/devices/sim-0/receive',
      { migration: 'm', op: 'a', ticket: 'A'.repeat(43), sourceNode: 'node-a', commitOnVerify: { op: 'commit', now: true } }, 400, /now/],
    ['a release whose stop is not a boolean', '/v1/devices/sim-0/release', { migration: 'm', op: 'a', stop: 'yes' }, 400, /stop/],
  ] as const)('%s', async (_what, path, body, status, why) => {
    const r = await raw(path, JSON.stringify(body));
    expect(r.status).toBe(status);
    expect(r.body.error.message).toMatch(why);
    expect(await src.device('sim-0')).toMatchObject({ state: 'RUNNING' });
    expect((await src.device('sim-0')).migration).toBeUndefined();
  });

  it('wrong content type, oversized body, not JSON', async () => {
    expect((await raw('/v1/devices/sim-0/state', '{}', { 'content-type': 'text/plain' })).status).toBe(415);
    expect((await raw('/v1/devices/sim-0/state', Buffer.alloc(200_000, 32))).status).toBe(413);
    expect((await raw('/v1/devices/sim-0/state', '{nope')).body.error.message).toMatch(/not JSON/);
  });
});

describe('agent: authentication and tickets', () => {
  async function call(material: { ca: Buffer; cert?: Buffer; key?: Buffer }, path = '/v1/devices') {
    const s = connect(source.endpoint, { ca: material.ca, ...(material.cert ? { cert: material.cert, key: material.key } : {}) });
    s.on('error', () => undefined);
    const req = s.request({ ':path': path });
    req.end();
    const [h] = (await once(req, 'response')) as [Record<string, string>];
    let text = '';
    for await (const c of req) text += String(c);
    s.close();
    return { status: Number(h[':status']), text };
  }

  it('refuses no credentials, another CA, and an agent driving devices', async () => {
    const none = await call({ ca: workdir.pki.controller.ca });
    expect(none.status).toBe(401);
    expect(none.text).toMatch(/no client certificate/);
    const rogue = await call(workdir.pki.rogue);
    expect(rogue.status).toBe(401);
    const agentB = await workdir.pki.agent('node-b');
    const asAgent = new (await import('../../src/agentapi/client.js')).AgentClient(source.endpoint, agentB, 'node-a');
    await expect(asAgent.setState('sim-0', { migration: 'm', op: 'a', state: 'STOP' })).rejects.toMatchObject({ status: 403 });
    asAgent.close();
    expect((await src.device('sim-0')).state).toBe('RUNNING');
    expect((await call({ ca: workdir.pki.controller.ca }, '/healthz')).status).toBe(200);
  });

  async function stream(as: Pki['controller'], migration: string, device: string, ticket: string, data: Buffer, trailers?: Record<string, string>,
    headers: Record<string, string> = {}) {
    const s = connect(target.endpoint, clientOptions(as, 'node-b'));
    s.on('error', () => undefined);
    const req = s.request({ ':method': 'PUT', ':path': `/v1/migrations/${migration}/stream`, 'devmig-ticket': ticket, 'devmig-device': device,
      'content-type': 'application/octet-stream', ...headers }, { waitForTrailers: true });
    req.on('error', () => undefined);
    req.once('wantTrailers', () => req.sendTrailers(trailers ?? {}));
    req.end(data);
    const [h] = (await once(req, 'response')) as [Record<string, string>];
    let text = '';
    for await (const c of req) text += String(c);
    s.close();
    return { status: Number(h[':status']), body: JSON.parse(text) as Record<string, unknown> };
  }

  it('a stream needs the right agent, migration, device and an unused ticket; refusals write nothing', async () => {
    const ticket = newTicket();
    await dst.receive('sim-0', { migration: 'm7', op: 'prepare', ticket, sourceNode: 'node-a' });
    const other = newTicket();
    await dst.receive('sim-1', { migration: 'm8', op: 'prepare', ticket: other, sourceNode: 'node-a' });
    const a = await workdir.pki.agent('node-a');
    const c = await workdir.pki.agent('node-c');
    const junk = Buffer.alloc(1000, 1);
    expect((await stream(c, 'm7', 'sim-0', ticket, junk)).status).toBe(403);                 // wrong agent
    expect((await stream(a, 'm7', 'sim-0', other, junk)).status).toBe(403);                  // another migration's ticket
    expect((await stream(a, 'm7', 'sim-1', ticket, junk)).status).toBe(403);                 // another device
    expect((await stream(workdir.pki.controller, 'm7', 'sim-0', ticket, junk)).status).toBe(403);    // not an agent
    const sessions = (await dst.migration('m7')).sessions;
    expect(sessions[0]).toMatchObject({ phase: 'Waiting', bytes: 0 });
    const bad = await stream(a, 'm7', 'sim-0', ticket, junk, { 'devmig-bytes': '1000', 'devmig-digest': 'sha256:00' });
    expect(bad.status).toBe(400); // the ticket is good; the sim driver refuses junk as not its stream
    const replay = await stream(a, 'm7', 'sim-0', ticket, junk);
    expect(replay.status).toBe(403);
    expect(String((replay.body.error as { message: string }).message)).toMatch(/already used/);
  });

  it('a stream whose count or digest differs is refused and cannot be committed', async () => {
    // Carry a real device stream but lie in the trailers.
    const { SimDevice } = await import('../../src/vfio/sim/device.js');
    const scratch = await SimDevice.open({ dir: join(workdir.dir, 'scratch'), name: 'x', stateSize: 4 * 2 ** 20 });
    const r = await scratch.setState('STOP_COPY');
    const parts: Buffer[] = [];
    for (;;) {
      const b = Buffer.alloc(1 << 20);
      const n = await (r.stream as import('../../src/vfio/device.js').SaveStream).read(b);
      if (n === 0 || n === 'ENOMSG') break;
      parts.push(b.subarray(0, n));
    }
    await scratch.close();
    const data = Buffer.concat(parts);
    const a = await workdir.pki.agent('node-a');
    for (const [m, trailers, why] of [
      ['m9', { 'devmig-bytes': String(data.length + 5), 'devmig-digest': 'sha256:x' }, /short/],
      ['m10', { 'devmig-bytes': String(data.length), 'devmig-digest': 'sha256:0000' }, /corrupt/],
    ] as const) {
      const ticket = newTicket();
      await dst.receive('sim-0', { migration: m, op: 'prepare', ticket, sourceNode: 'node-a' });
      const res = await stream(a, m, 'sim-0', ticket, data, trailers);
      expect(res.body).toMatchObject({ verified: false });
      expect(res.status).toBe(422);
      expect(String(res.body.message)).toMatch(why);
      await expect(dst.commit('sim-0', { migration: m, op: 'commit' })).rejects.toMatchObject({ code: 'NotVerified' });
      await dst.cancel(m, { op: 'cancel' });
      await dst.release('sim-0', { migration: m, op: 'release' });
    }
    await writeFile(join(workdir.dir, 'unused'), '');
  });

  it('a stream with a digest the target does not accept is refused before a byte is read; the ticket stays unspent', async () => {
    const ticket = newTicket();
    await dst.receive('sim-0', { migration: 'm11', op: 'prepare', ticket, sourceNode: 'node-a' });
    const a = await workdir.pki.agent('node-a');
    const weak = target.ctx.config.digest === 'crc32' ? 'sha256' : 'crc32';
    const res = await stream(a, 'm11', 'sim-0', ticket, Buffer.alloc(1000, 1), undefined, { 'devmig-digest-algorithm': weak });
    expect(res.status).toBe(422);
    expect(res.body.error).toMatchObject({ code: 'DigestRefused' });
    expect(String((res.body.error as { message: string }).message)).toMatch(new RegExp(`"${weak}" is not one node node-b accepts \\(${target.ctx.config.digest}\\)`));
    expect((await dst.migration('m11')).sessions[0]).toMatchObject({ phase: 'Waiting', bytes: 0 });
    await dst.cancel('m11', { op: 'cancel' });
    await dst.release('sim-0', { migration: 'm11', op: 'release' });
  });
});

describe('AgentCallError', () => {
  it('carries the agent answer', () => {
    const e = new AgentCallError(422, 'ArcFailed', 'x', { arcs: [] });
    expect(e.body).toEqual({ arcs: [] });
  });
});
