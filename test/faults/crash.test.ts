/**
 * The fault matrix, crashes: SIGKILL the source agent, the target agent or the controller at a stage
 * of a migration, start it again, and check DESIGN.md's invariants on the outcome: the migration ends
 * (Succeeded, or RolledBack with the source RUNNING and its digest unchanged), never with both devices
 * RUNNING on the state, within a bounded time. Prints the table.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import { Kube, type DeviceMigration } from '../../src/controller/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { devmigBin } from '../helpers/cli.js';

let dir: string;
let env: LocalState;
let kube: Kube;
const pids = { controller: 0, agents: {} as Record<string, number> };
const rows: string[][] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-faults-'));
  env = await localUp({ dir, nodes: 2, devices: 6, stateSize: '8Mi', loopbackPrefix: '127.0.2' }, () => undefined);
  kube = Kube.fromFile(env.kubeconfig);
  pids.controller = env.controller.pid;
  for (const a of env.agents) pids.agents[a.node] = a.pid;
}, 20 * 60_000);

afterAll(async () => {
  for (const pid of [pids.controller, ...Object.values(pids.agents)]) { try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ } }
  await localDown(dir, () => undefined);
  // The logs of a failed run are what a person needs: keep them where CI can show them.
  if (process.env.DEVMIG_FAULT_LOGS) await cp(join(dir, 'logs'), process.env.DEVMIG_FAULT_LOGS, { recursive: true }).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
  process.stdout.write(`\n${['SCENARIO', 'OUTCOME', 'INVARIANTS', 'SECONDS'].join(' | ')}\n${rows.map((r) => r.join(' | ')).join('\n')}\n`);
}, 60_000);

function restart(what: string): void {
  const args = what === 'controller' ? ['controller', '--config', env.controller.config] : ['agent', '--config', join(dir, what, 'agent.json')];
  const log = openSync(join(dir, 'logs', `${what === 'controller' ? 'controller' : `agent-${what}`}.log`), 'a');
  const child = spawn(process.execPath, [devmigBin, ...args], { stdio: ['ignore', log, log], detached: true });
  closeSync(log);
  child.unref();
  if (what === 'controller') pids.controller = child.pid!;
  else pids.agents[what] = child.pid!;
}

function kill(what: string): void {
  process.kill(what === 'controller' ? pids.controller : pids.agents[what]!, 'SIGKILL');
}

const simDir = (node: string) => env.agents.find((a) => a.node === node)!.simDir;

async function phaseOf(name: string): Promise<string | undefined> {
  return (await kube.getMigration(name))?.status?.phase;
}

async function scenario(name: string, device: string, victim: 'controller' | 'node-1' | 'node-2', when: (n: string) => Promise<boolean>) {
  const started = Date.now();
  const before = await simDigest(simDir('node-1'), device);
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-1', device }, target: { node: 'node-2', device }, strategy: 'StopCopy', limits: { bandwidth: '4Mi' } },
  } });
  await until(`${name} reaches the stage`, () => when(name), 30_000, 20);
  kill(victim);
  await new Promise((r) => setTimeout(r, 500));
  restart(victim);
  const m = await until<DeviceMigration>(`${name} final`, async () => {
    const x = await kube.getMigration(name);
    return x?.status?.phase && ['Succeeded', 'RolledBack', 'Failed', 'Cancelled'].includes(x.status.phase) ? x : undefined;
  }, 120_000, 100).catch(async (e: Error) => {
    // Where it stalled is the whole diagnosis: say it in the failure.
    const x = await kube.getMigration(name);
    const { arcs, ...rest } = x?.status ?? {};
    throw new Error(`${e.message}; status: ${JSON.stringify({ ...rest, lastArcs: (arcs ?? []).slice(-4) })}`);
  });
  const src = await simDigest(simDir('node-1'), device);
  const dst = await simDigest(simDir('node-2'), device);
  const both = src.state === 'RUNNING' && dst.state === 'RUNNING' && src.sha256 === before.sha256 && dst.sha256 === before.sha256;
  const checks: string[] = [];
  expect(both).toBe(false); checks.push('never two runners');
  if (m.status?.phase === 'Succeeded') {
    expect(dst).toMatchObject({ state: 'RUNNING', sha256: before.sha256 }); checks.push('target has the state');
  } else {
    expect(m.status?.phase).toBe('RolledBack');
    expect(src).toMatchObject({ state: 'RUNNING', sha256: before.sha256 }); checks.push('source RUNNING, digest unchanged');
    expect(m.status?.failure?.reason).toBeTruthy(); checks.push('status says why');
  }
  rows.push([name, `${m.status?.phase}${m.status?.failure ? ` (${m.status.failure.reason})` : ''}`, checks.join(', '), ((Date.now() - started) / 1000).toFixed(1)]);
}

const streaming = async (n: string) => (await phaseOf(n)) === 'StopCopy' && ((await kube.getMigration(n))?.status?.transfer?.bytes ?? 0) > 2 ** 20;

const T = 180_000;
it('source agent killed mid-stop-copy', () => scenario('kill-source-streaming', 'sim-0', 'node-1', streaming), T);
it('target agent killed mid-stop-copy', () => scenario('kill-target-streaming', 'sim-1', 'node-2', streaming), T);
it('controller killed mid-stop-copy', () => scenario('kill-controller-streaming', 'sim-2', 'controller', streaming), T);
it('controller killed after the target was prepared', () =>
  scenario('kill-controller-prepared', 'sim-3', 'controller', async (n) => (await kube.getMigration(n))?.status?.step === 'StartSend' || (await phaseOf(n)) === 'StopCopy'), T);
