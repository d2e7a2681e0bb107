/**
 * An agent killed with SIGKILL mid-migration: with the fd holder the device keeps its state (the
 * kernel would reset it on last close otherwise), the restarted agent reports the interrupted session,
 * and the migration completes on a retry. Without the holder the device is reset, as the kernel does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Agent } from '../../src/agent/agent.js';
import { AgentClient } from '../../src/agentapi/client.js';
import { newTicket } from '../../src/agent/identity.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { agentConfig, controllerClient, startAgent, until, scratchWithPki } from '../helpers/agents.js';
import { devmigBin } from '../helpers/cli.js';

const workdir = scratchWithPki('restart');

function spawnAgent(configPath: string): ChildProcess {
  const child = spawn(process.execPath, [devmigBin, 'agent', '--config', configPath], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DEVMIG_LOG_LEVEL: 'warn' } });
  child.stderr?.on('data', () => undefined);
  return child;
}

async function endpointOf(child: ChildProcess, host: string, port: number, client: () => AgentClient): Promise<AgentClient> {
  void child;
  return until(`agent on ${host}:${port}`, async () => {
    const c = client();
    try {
      await c.ready();
      return c;
    } catch {
      c.close();
      return undefined;
    }
  });
}

describe.each([
  ['with the fd holder', true],
  ['without the fd holder', false],
])('agent SIGKILLed mid-stream %s', (_label, holder) => {
  it(holder ? 'keeps the device state and completes on retry' : 'loses the stopped device state to a reset', async () => {
    const run = join(workdir.dir, holder ? 'held' : 'bare');
    const port = 20000 + Math.floor(Math.random() * 20000);
    const cfgA = await agentConfig(run, workdir.pki, 'node-a', '127.0.0.2', [{ name: 'sim-0', stateSize: '16Mi' }], { holder, listen: { host: '127.0.0.2', port } });
    const target: Agent = await startAgent(await agentConfig(run, workdir.pki, 'node-b', '127.0.0.3', [{ name: 'sim-0', stateSize: '16Mi' }]));
    const dst = controllerClient(target, workdir.pki);
    const simA = cfgA.devices.simulated!.dir;
    const endpoint = `https://127.0.0.2:${port}`;
    const mk = () => new AgentClient(endpoint, workdir.pki.controller, 'node-a', 5000);
    let agentA = spawnAgent(join(run, 'node-a', 'agent.json'));
    let src = await endpointOf(agentA, '127.0.0.2', port, mk);
    try {
      const before = await simDigest(simA, 'sim-0');
      const ticket = newTicket();
      await dst.receive('sim-0', { migration: 'mk', op: 'prepare', ticket, sourceNode: 'node-a' });
      await src.send('sim-0', { migration: 'mk', op: 'send', ticket, bandwidth: 4 * 2 ** 20, target: { node: 'node-b', device: 'sim-0', endpoint: target.endpoint } });
      await until('bytes moving', async () => ((await src.migration('mk')).sessions[0]?.bytes ?? 0) > 2 ** 20);
      agentA.kill('SIGKILL');
      await new Promise((r) => agentA.once('exit', r));
      src.close();

      // Whatever happens next, the target never got the whole stream, so it cannot commit.
      await until('target session failed', async () => (await dst.migration('mk')).sessions[0]?.phase === 'Failed');
      await expect(dst.commit('sim-0', { migration: 'mk', op: 'commit' })).rejects.toMatchObject({ code: 'NotVerified' });

      agentA = spawnAgent(join(run, 'node-a', 'agent.json'));
      src = await endpointOf(agentA, '127.0.0.2', port, mk);
      const after = await simDigest(simA, 'sim-0');
      if (!holder) {
        expect(after.state).toBe('RUNNING');
        expect(after.sha256).not.toBe(before.sha256);
        return;
      }
      expect(after).toMatchObject({ state: 'STOP_COPY', sha256: before.sha256 });
      expect(await src.device('sim-0')).toMatchObject({ state: 'STOP_COPY', migration: 'mk', step: 'send:streaming>interrupted' });
      expect((await src.migration('mk')).sessions).toEqual([expect.objectContaining({ phase: 'Interrupted', role: 'source' })]);

      // The retry: the target is reset (aborting RESUMING needs it) and prepared again; the source
      // leaves STOP_COPY for a fresh data_fd.
      await dst.cancel('mk', { op: 'cancel-1' });
      const t2 = newTicket();
      await dst.receive('sim-0', { migration: 'mk', op: 'prepare-2', ticket: t2, sourceNode: 'node-a' });
      const resend = await src.send('sim-0', { migration: 'mk', op: 'send-2', ticket: t2, target: { node: 'node-b', device: 'sim-0', endpoint: target.endpoint } });
      expect(resend.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['STOP_COPY>STOP', 'STOP>STOP_COPY']);
      await until('verified', async () => (await src.migration('mk')).sessions[0]?.phase === 'Verified');
      await dst.commit('sim-0', { migration: 'mk', op: 'commit-2' });
      await dst.setState('sim-0', { migration: 'mk', op: 'run', state: 'RUNNING' });
      expect((await simDigest(target.ctx.config.devices.simulated!.dir, 'sim-0')).sha256).toBe(before.sha256);
    } finally {
      src.close();
      dst.close();
      agentA.kill('SIGTERM');
      await target.stop();
      const holderPid = Number(await readFile(join(cfgA.stateDir, 'holder.pid'), 'utf8').catch(() => '0'));
      if (holderPid > 0) process.kill(holderPid, 'SIGTERM');
    }
  });
});
