/**
 * The operator end to end on the local control plane: a real kube-apiserver (RBAC on), the CRDs,
 * agents as processes on loopback addresses, the controller as a process.
 */
import { spawn } from 'node:child_process';
import * as k8s from '@kubernetes/client-node';
import { constants } from 'node:fs';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import { Kube, type DeviceMigration } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { devmigBin } from '../helpers/cli.js';
import { until } from '../helpers/agents.js';

let dir: string;
let env: LocalState;
let kube: Kube;
const extraPids: number[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-operator-'));
  env = await localUp({ dir, nodes: 2, devices: 3, stateSize: '4Mi', loopbackPrefix: '127.0.7' }, (t) => process.stderr.write(`${t}\n`));
  kube = Kube.fromFile(env.kubeconfig);
}, 20 * 60_000);

afterAll(async () => {
  for (const p of extraPids) { try { process.kill(p, 'SIGTERM'); } catch { /* gone */ } }
  await localDown(dir, () => undefined);
  if (!process.env.DEVMIG_KEEP) await rm(dir, { recursive: true, force: true });
}, 60_000);

const simDir = (node: string) => env.agents.find((a) => a.node === node)!.simDir;

async function create(name: string, spec: Record<string, unknown>): Promise<void> {
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', fieldValidation: 'Strict',
    body: { apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, spec } });
}

/** The controller now running: the local environment's, or the one a test started after killing it. */
const controllerPid = () => extraPids.at(-1) ?? env.controller.pid;
const stopController = () => { process.kill(controllerPid(), 'SIGKILL'); };
function startController(): void {
  const child = spawn(process.execPath, [devmigBin, 'controller', '--config', env.controller.config], { stdio: 'ignore', detached: true });
  extraPids.push(child.pid!);
}
const restartController = () => { stopController(); startController(); };

async function finished(name: string, timeoutMs = 60_000): Promise<DeviceMigration> {
  return until(`${name} final`, async () => {
    const m = await kube.getMigration(name);
    return m?.status?.phase && ['Succeeded', 'Failed', 'RolledBack', 'Cancelled'].includes(m.status.phase) ? m : undefined;
  }, timeoutMs, 100);
}

it('keeps the simulated devices\' state in device memory (tmpfs where there is one), apart from the environment\'s directory', async () => {
  const shm = await access('/dev/shm', constants.W_OK).then(() => true, () => false);
  expect(env.deviceMemory).toMatch(shm ? /^\/dev\/shm\/devmig-local-[0-9a-f]{12}$/ : /devmig-local-[0-9a-f]{12}$/);
  for (const a of env.agents) expect(a.simDir).toBe(join(env.deviceMemory!, a.node));
  await expect(access(join(simDir('node-1'), 'sim-0', 'state.bin'))).resolves.toBeUndefined();
});

describe('the API server refuses bad DeviceMigrations, naming the field', () => {
  it.each([
    ['same source and target', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-1', device: 'sim-0' } }, /spec.target must differ from spec.source/],
    ['zero bandwidth', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, limits: { bandwidth: '0' } }, /spec.limits.bandwidth must be positive/],
    ['zero timeout', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, limits: { timeout: '0s' } }, /spec.limits.timeout must be positive/],
    ['a bad quantity', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, limits: { bandwidth: 'fast' } }, /spec.limits.bandwidth/],
    ['an unknown strategy', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, strategy: 'Live' }, /spec.strategy/],
    ['an unknown field', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, extra: true }, /unknown field .*spec\.extra/],
    ['a missing device', { source: { node: 'node-1' }, target: { node: 'node-2' } }, /spec.source.device/],
  ])('%s', async (_what, spec, why) => {
    await expect(create(`bad-${Math.random().toString(36).slice(2, 8)}`, spec)).rejects.toMatchObject({ body: expect.stringMatching(why) as unknown });
  });

  it('spec is immutable except cancel', async () => {
    await create('immutable', { source: { node: 'node-1', device: 'nope' }, target: { node: 'node-2' } });
    await expect(kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', name: 'immutable',
      body: { spec: { target: { node: 'node-1' } } } }, (await import('@kubernetes/client-node')).setHeaderOptions('Content-Type', 'application/merge-patch+json')))
      .rejects.toMatchObject({ body: expect.stringMatching(/immutable once created, except spec.cancel/) as unknown });
    const m = await finished('immutable');
    expect(m.status).toMatchObject({ phase: 'Failed', failure: { reason: 'DeviceNotFound', message: expect.stringMatching(/no device nope.*sim-0, sim-1, sim-2.*fix spec.source.device/) as unknown } });
  });
});

describe('migrations', () => {
  it('StopCopy moves the state exactly and records every arc, the downtime and Ready', async () => {
    const before = await simDigest(simDir('node-1'), 'sim-0');
    // Every status the API server stored, as a watch sees them.
    const seen: DeviceMigration[] = [];
    const watch = await new k8s.Watch(kube.config).watch('/apis/devmig.io/v1alpha1/devicemigrations', { fieldSelector: 'metadata.name=move' },
      (_type: string, o: DeviceMigration) => { seen.push(o); }, () => undefined);
    await create('move', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2', device: 'sim-0' }, strategy: 'StopCopy' });
    const m = await finished('move');
    await until('the last status seen by the watch', () => Promise.resolve(seen.at(-1)?.status?.phase === 'Succeeded'));
    watch.abort();
    // Write-ahead: the target commits on its own verdict (armed), and that intent was on record
    // before the target was prepared (no arc of it yet).
    const prepared = seen.find((x) => x.status?.step === 'PrepareTarget');
    expect(prepared?.status).toMatchObject({ commitOnVerify: true });
    expect(prepared?.status?.arcs ?? []).toEqual([]);
    // Steps whose replay is harmless are not written on their own: what is written is the target
    // chosen (and armed), what the stream does while a look waits, the target running (committedAt),
    // the end. Not Commit: its op, on an armed target, only reads what the target did.
    const recorded = [...new Set(seen.map((x) => x.status?.step).filter(Boolean))];
    expect(recorded).toEqual(expect.arrayContaining(['PrepareTarget', 'ResumeTarget', 'Succeeded']));
    expect(recorded.filter((x) => !['PrepareTarget', 'Streaming', 'ResumeTarget', 'Succeeded'].includes(x!))).toEqual([]);
    expect(seen.find((x) => x.status?.step === 'ResumeTarget')?.status).toMatchObject({ committedAt: expect.any(String) as unknown, downtimeMs: expect.any(Number) as unknown });
    // An Event for each phase a person sees, once.
    const told = await until('an event per phase', async () => {
      const reasons = (await kube.core.listNamespacedEvent({ namespace: 'default', fieldSelector: 'involvedObject.name=move' })).items.map((e) => e.reason);
      return reasons.includes('Succeeded') ? reasons : undefined;
    });
    expect(told.sort()).toEqual(['Preparing', 'Resuming', 'StopCopy', 'Succeeded']);
    expect(m.status?.phase).toBe('Succeeded');
    expect((await simDigest(simDir('node-2'), 'sim-0')).sha256).toBe(before.sha256);
    const arcs = m.status!.arcs!.map((a) => `${a.device}:${a.from}>${a.to}:${a.result}`);
    expect(arcs).toEqual(expect.arrayContaining(['target:STOP>RESUMING:Succeeded', 'source:STOP>STOP_COPY:Succeeded', 'target:RESUMING>STOP:Succeeded', 'target:RUNNING_P2P>RUNNING:Succeeded']));
    expect(m.status?.downtimeMs).toBeGreaterThan(0);
    expect(m.status?.transfer?.bytes).toBeGreaterThan(4 * 2 ** 20);
    expect(m.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', reason: 'Succeeded', observedGeneration: 1 });
    for (const stage of ['Validated', 'TargetPrepared', 'StreamVerified', 'Committed', 'SourceReleased']) {
      expect(m.status?.conditions?.find((c) => c.type === stage)).toMatchObject({ status: 'True', observedGeneration: 1 });
    }
    expect(m.metadata.finalizers ?? []).toContain('devmig.io/rollback');
  });

  it('a target that fails RESUMING -> STOP rolls back: the source runs with its state unchanged', async () => {
    const before = await simDigest(simDir('node-1'), 'sim-1');
    await writeFile(join(simDir('node-2'), 'sim-1', 'faults.json'), JSON.stringify([{ arc: 'RESUMING>STOP', errno: 'EIO', then: 'ERROR', times: 1 }]));
    await create('refused', { source: { node: 'node-1', device: 'sim-1' }, target: { node: 'node-2', device: 'sim-1' }, strategy: 'StopCopy' });
    const m = await finished('refused');
    expect(m.status).toMatchObject({ phase: 'RolledBack', failure: { reason: 'ArcFailed' } });
    expect(m.status?.conditions?.find((c) => c.type === 'Committed')).toBeUndefined();
    expect(m.status?.conditions?.find((c) => c.type === 'StreamVerified')).toMatchObject({ status: 'True' });
    expect(m.status!.arcs).toEqual(expect.arrayContaining([expect.objectContaining({ device: 'target', from: 'RESUMING', to: 'STOP', result: 'Failed', errno: 'EIO' })]));
    const after = await simDigest(simDir('node-1'), 'sim-1');
    expect(after).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
    // Events are created after the status is written, without holding up the steps.
    await until('a Warning ArcFailed event', async () =>
      (await kube.core.listNamespacedEvent({ namespace: 'default', fieldSelector: 'involvedObject.name=refused' })).items.some((e) => e.type === 'Warning' && e.reason === 'ArcFailed'));
  });

  it('cancel mid-stream rolls back', async () => {
    const before = await simDigest(simDir('node-1'), 'sim-2');
    await create('cancel-me', { source: { node: 'node-1', device: 'sim-2' }, target: { node: 'node-2', device: 'sim-2' }, strategy: 'StopCopy', limits: { bandwidth: '1Mi' } });
    await until('streaming', async () => (await kube.getMigration('cancel-me'))?.status?.phase === 'StopCopy', 30_000, 50);
    const { setHeaderOptions } = await import('@kubernetes/client-node');
    await kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', name: 'cancel-me',
      body: { spec: { cancel: true } } }, setHeaderOptions('Content-Type', 'application/merge-patch+json'));
    const m = await finished('cancel-me');
    expect(m.status).toMatchObject({ phase: 'Cancelled', failure: { reason: 'Cancelled' } });
    expect(await simDigest(simDir('node-1'), 'sim-2')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
  });

  it('the controller killed mid-migration: a new one continues from status and finishes', async () => {
    const before = await simDigest(simDir('node-2'), 'sim-0');
    await create('survive', { source: { node: 'node-2', device: 'sim-0' }, target: { node: 'node-1' }, strategy: 'StopCopy', limits: { bandwidth: '2Mi' } });
    await until('streaming', async () => (await kube.getMigration('survive'))?.status?.phase === 'StopCopy', 30_000, 50);
    restartController();
    const m = await finished('survive', 120_000);
    expect(m.status?.phase).toBe('Succeeded');
    expect((await simDigest(simDir('node-1'), m.status!.targetDevice!)).sha256).toBe(before.sha256);
  });

  it('a rollback that finds the armed target committed and running finishes the migration instead', async () => {
    const before = await simDigest(simDir('node-2'), 'sim-2');
    await create('overtaken', { source: { node: 'node-2', device: 'sim-2' }, target: { node: 'node-1', device: 'sim-2' }, strategy: 'StopCopy', limits: { bandwidth: '2Mi' } });
    await until('streaming', async () => (await kube.getMigration('overtaken'))?.status?.phase === 'StopCopy', 30_000, 50);
    // No controller from here: the target verifies the stream and runs it on its own.
    stopController();
    await until('the target to run', async () => (await simDigest(simDir('node-1'), 'sim-2')).state === 'RUNNING', 30_000, 100);
    expect((await simDigest(simDir('node-1'), 'sim-2')).sha256).toBe(before.sha256);
    // A cancel now, read by the next controller before it learns of the verdict: it rolls back,
    // asks the target first, hears that it runs the state, and finishes instead (never two runners).
    const { setHeaderOptions } = await import('@kubernetes/client-node');
    await kube.custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', name: 'overtaken',
      body: { spec: { cancel: true } } }, setHeaderOptions('Content-Type', 'application/merge-patch+json'));
    startController();
    const m = await finished('overtaken');
    expect(m.status?.phase).toBe('Succeeded');
    expect(m.status?.failure).toBeUndefined();
    expect(m.status?.conditions?.find((c) => c.type === 'Cancelled')).toMatchObject({ status: 'False', reason: 'TooLateToCancel' });
    expect(m.status?.conditions?.find((c) => c.type === 'Ready')).toMatchObject({ status: 'True', reason: 'Succeeded' });
    expect(m.status?.downtimeMs).toBeGreaterThan(0);
    expect(await simDigest(simDir('node-1'), 'sim-2')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
    // The source never ran the state again: it was reset once released (no copy left behind).
    expect((await simDigest(simDir('node-2'), 'sim-2')).sha256).not.toBe(before.sha256);
    expect(m.status!.arcs!.filter((a) => a.device === 'source' && a.to === 'RUNNING')).toEqual([]);
    const events = await until('a RollbackOvertaken event', async () => {
      const items = (await kube.core.listNamespacedEvent({ namespace: 'default', fieldSelector: 'involvedObject.name=overtaken' })).items;
      return items.some((e) => e.reason === 'RollbackOvertaken') ? items : undefined;
    });
    expect(events.find((e) => e.reason === 'RollbackOvertaken')?.message).toMatch(/committed on its own verdict .*Cancelled/);
  });
});

describe('kubectl devmig', () => {
  async function plugin(...args: string[]) {
    const { pluginMain } = await import('../../src/cli/plugin.js');
    let stdout = '';
    let stderr = '';
    const code = await pluginMain(['--kubeconfig', env.kubeconfig, ...args], { out: (t) => { stdout += `${t}\n`; }, err: (t) => { stderr += `${t}\n`; } });
    return { code, stdout, stderr };
  }

  it('migrate --wait, status, devices, and clear errors', async () => {
    const m = await plugin('migrate', 'node-1/sim-1', '--to', 'node-2/sim-1', '--strategy', 'StopCopy', '--name', 'by-plugin', '--wait', '-o', 'json');
    expect(m.code).toBe(0);
    expect(JSON.parse(m.stdout.trim().split('\n').at(-1)!)).toMatchObject({ status: { phase: 'Succeeded' } });
    const s = await plugin('status', 'by-plugin');
    expect(s.stdout).toMatch(/by-plugin\s+Succeeded\s+\[#{20}\] 100%/);
    expect(s.stdout).toMatch(/^DEVICE\s+FROM\s+TO\s+STARTED\s+MS\s+RESULT\s+ERRNO$/m);
    expect(s.stdout).toMatch(/^target\s+RESUMING\s+STOP\s/m);
    const d = await plugin('devices', 'node-2', '-o', 'yaml');
    expect(d.stdout).toMatch(/- node: node-2\n(\s+\S.*\n)*?\s+name: sim-0\n/);
    const t = await plugin('devices');
    expect(t.stdout).toMatch(/^NODE\s+DEVICE\s+KIND\s+FLAGS\s+STATE\s+OCCUPANCY\s+SINCE\s+MIGRATION$/m);
    expect((await plugin('cancel', 'nope')).stderr).toMatch(/no DeviceMigration nope/);
    expect((await plugin('migrate', 'node-1', '--to', 'node-2')).stderr).toMatch(/name the device too/);
    expect((await plugin('migrate', 'Node_1/x', '--to', 'node-2')).stderr).toMatch(/write NODE or NODE\/DEVICE/);
  });
});
