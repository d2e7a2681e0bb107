/**
 * The fault matrix, crashes: SIGKILL the source agent, the target agent or the controller at each of
 * six stages of a migration (prepared, mid-PRE_COPY, mid-STOP_COPY, validated, committed, resuming),
 * start it again, and check DESIGN.md's invariants on the outcome: the migration ends
 * (Succeeded, or RolledBack with the source RUNNING and its digest unchanged), never with both devices
 * RUNNING on the state, within a bounded time. Prints the table.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import { Kube } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { checkInvariants, checkOwnership, row, settled, table } from '../helpers/faults.js';
import { devmigBin } from '../helpers/cli.js';

let dir: string;
let env: LocalState;
let kube: Kube;
const pids = { controller: 0, agents: {} as Record<string, number> };
const rows: string[][] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-faults-'));
  env = await localUp({ dir, nodes: 2, devices: 19, stateSize: '8Mi', loopbackPrefix: '127.0.2' }, () => undefined);
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
  process.stdout.write(table(rows));
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

type Victim = 'controller' | 'node-1' | 'node-2';
interface Stage {
  /** A slow arc that holds the migration in the stage long enough to kill something in it. */
  readonly slow?: { node: 'node-1' | 'node-2'; arc: string };
  readonly bandwidth?: string;
  readonly strategy?: 'PreCopy';
  readonly when: (name: string, device: string) => Promise<boolean>;
}

const stateOf = async (node: string, device: string) => (await simDigest(simDir(node), device)).state;
const notFinal = async (name: string) => !['Succeeded', 'RolledBack', 'Failed', 'Cancelled'].includes((await phaseOf(name)) ?? '');

/** The stages DESIGN.md names, each with the fault that widens its window and how to see we are in it. */
const STAGES: Record<string, Stage> = {
  // The target waits in RESUMING while the source's first arc (RUNNING -> RUNNING_P2P) takes 4 s.
  prepared: { slow: { node: 'node-1', arc: 'RUNNING>RUNNING_P2P' }, when: async (n, d) => (await stateOf('node-2', d)) === 'RESUMING' && (await stateOf('node-1', d)) === 'RUNNING' && notFinal(n) },
  // PRE_COPY while the device runs: 8 MiB of initial data at 4 MiB/s.
  precopy: { strategy: 'PreCopy', bandwidth: '4Mi', when: async (n) => (await phaseOf(n)) === 'PreCopy' && ((await kube.getMigration(n))?.status?.transfer?.bytes ?? 0) > 2 ** 20 },
  streaming: { bandwidth: '4Mi', when: async (n) => (await phaseOf(n)) === 'StopCopy' && ((await kube.getMigration(n))?.status?.transfer?.bytes ?? 0) > 2 ** 20 },
  // RESUMING -> STOP accepted the stream; STOP -> RUNNING_P2P takes 4 s.
  validated: { slow: { node: 'node-2', arc: 'STOP>RUNNING_P2P' }, when: async (n, d) => (await stateOf('node-2', d)) === 'STOP' && notFinal(n) },
  // The target runs and status says committed; the source's STOP_COPY -> STOP (release) takes 4 s.
  committed: { slow: { node: 'node-1', arc: 'STOP_COPY>STOP' }, when: async (n) => Boolean((await kube.getMigration(n))?.status?.committedAt) && notFinal(n) },
  // The target's RUNNING_P2P -> RUNNING takes 4 s.
  resuming: { slow: { node: 'node-2', arc: 'RUNNING_P2P>RUNNING' }, when: async (n, d) => (await stateOf('node-2', d)) === 'RUNNING_P2P' && notFinal(n) },
};

let devices = 0;
async function scenario(stageName: string, victim: Victim) {
  const stage = STAGES[stageName]!;
  const name = `kill-${victim === 'controller' ? 'controller' : victim === 'node-1' ? 'source' : 'target'}-${stageName}`;
  const device = `sim-${devices++}`;
  const faultFile = stage.slow ? join(simDir(stage.slow.node), device, 'faults.json') : undefined;
  if (faultFile) await writeFile(faultFile, JSON.stringify([{ arc: stage.slow!.arc, delayMs: 4000, times: 1 }]));
  const started = Date.now();
  const before = await simDigest(simDir('node-1'), device);
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-1', device }, target: { node: 'node-2', device }, strategy: stage.strategy ?? 'StopCopy', ...(stage.bandwidth ? { limits: { bandwidth: stage.bandwidth } } : {}) },
  } });
  await until(`${name} reaches the stage`, () => stage.when(name, device), 30_000, 20);
  kill(victim);
  // The fault has done its work: a restarted agent must not slow down again.
  if (faultFile) await rm(faultFile, { force: true });
  await new Promise((r) => setTimeout(r, 500));
  restart(victim);
  const m = await settled(kube, name);
  const src = await simDigest(simDir('node-1'), device);
  const dst = await simDigest(simDir('node-2'), device);
  rows.push(row(name, m, [...checkInvariants(m, before, src, dst), ...(await checkOwnership(kube, m, before, src))], started));
}

const T = 180_000;
for (const stage of Object.keys(STAGES)) {
  describe(`at stage ${stage}`, () => {
    it('source agent killed', () => scenario(stage, 'node-1'), T);
    it('target agent killed', () => scenario(stage, 'node-2'), T);
    it('controller killed', () => scenario(stage, 'controller'), T);
  });
}
