/**
 * PRE_COPY on the local control plane, with workloads that keep dirtying their devices: it switches
 * to STOP_COPY when what is left fits maxDowntime at the measured rate; at spec.precopy.maxDuration
 * it stops anyway or rolls back, as the spec says; progress never goes down; downtime is recorded.
 */
import { API_VERSION } from '../../src/api/names.js';
import type { DeviceMigration } from '../../src/kube/kube.js';
import { progressOf } from '../../src/controller/reconcile.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { FINAL } from '../helpers/faults.js';
import { localCluster } from '../helpers/local.js';

const local = localCluster('precopy', { nodes: 2, devices: 3, stateSize: '8Mi', dirtyRate: '4Mi', loopbackPrefix: '127.0.16' });

/** Creates the migration and samples its status every 25 ms until it is final. */
async function watch(name: string, spec: Record<string, unknown>): Promise<{ m: DeviceMigration; progress: number[] }> {
  await local.kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, spec,
  } });
  const progress: number[] = [];
  const deadline = Date.now() + 90_000;
  for (;;) {
    const m = await local.kube.getMigration(name);
    if (m?.status?.progress) progress.push(Number.parseInt(m.status.progress, 10));
    if (m && FINAL.includes(m.status?.phase ?? '')) return { m, progress };
    if (Date.now() > deadline) throw new Error(`${name} not final in 90 s: ${JSON.stringify(m?.status)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const monotonic = (xs: number[]) => xs.every((x, i) => i === 0 || x >= xs[i - 1]!);

it('converges at the measured rate, records the downtime, and progress only goes up', async () => {
  const { m, progress } = await watch('converges', {
    source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2', device: 'sim-0' }, strategy: 'PreCopy',
    // The bandwidth cap makes the rounds last (8Mi at 8Mi/s, then what was dirtied meanwhile): at
    // loopback speed an idle machine moved it all between two samples, and progress was seen once.
    limits: { maxDowntime: '300ms', bandwidth: '8Mi' },
  });
  expect(m.status?.phase).toBe('Succeeded');
  expect(m.status?.convergence).toMatchObject({ reason: 'Converged', message: expect.stringMatching(/within maxDowntime 300 ms/) as unknown });
  expect(m.status?.convergence?.estimatedDowntimeMs).toBeLessThanOrEqual(300);
  expect(m.status?.transfer?.rate).toBeGreaterThan(0);
  // PRE_COPY sent the dirtied pages again: more than the state itself went over the wire.
  expect(m.status?.transfer?.bytes).toBeGreaterThan(8 * 2 ** 20);
  expect(typeof m.status?.downtimeMs).toBe('number');
  expect(progress.length).toBeGreaterThan(3);
  expect(monotonic(progress)).toBe(true);
  expect(progress.at(-1)).toBe(100);
  expect(m.status?.arcs?.some((a) => a.device === 'source' && a.to === 'PRE_COPY')).toBe(true);
}, 120_000);

it('does not converge, and onNoConvergence: Fail rolls back with the source still running', async () => {
  const { m, progress } = await watch('no-convergence-fails', {
    source: { node: 'node-1', device: 'sim-1' }, target: { node: 'node-2', device: 'sim-1' }, strategy: 'PreCopy',
    limits: { maxDowntime: '100ms', bandwidth: '2Mi' }, precopy: { maxDuration: '3s', onNoConvergence: 'Fail' },
  });
  expect(m.status?.phase).toBe('RolledBack');
  expect(m.status?.failure).toMatchObject({ reason: 'NoConvergence', message: expect.stringMatching(/did not converge in 3s.*onNoConvergence is Fail/) as unknown });
  expect((await simDigest(local.env.agents[0]!.simDir, 'sim-1')).state).toBe('RUNNING');
  expect(m.status?.arcs?.some((a) => a.device === 'source' && (a.to === 'STOP' || a.to === 'STOP_COPY'))).toBe(false);
  expect(monotonic(progress)).toBe(true);
}, 120_000);

it('does not converge, and onNoConvergence: StopCopy stops anyway and succeeds', async () => {
  const { m, progress } = await watch('no-convergence-stops', {
    source: { node: 'node-1', device: 'sim-2' }, target: { node: 'node-2', device: 'sim-2' }, strategy: 'PreCopy',
    limits: { maxDowntime: '100ms', bandwidth: '2Mi' }, precopy: { maxDuration: '3s', onNoConvergence: 'StopCopy' },
  });
  expect(m.status?.phase).toBe('Succeeded');
  expect(m.status?.convergence).toMatchObject({ reason: 'LimitReached', message: expect.stringMatching(/stopping anyway/) as unknown });
  expect(m.status?.downtimeMs).toBeGreaterThan(100);
  expect(monotonic(progress)).toBe(true);
}, 120_000);

describe('progress', () => {
  const status = (bytes: number, expectedBytes?: number) => ({ transfer: { bytes, ...(expectedBytes ? { expectedBytes } : {}) } });
  it('never goes down when the expected total grows, and is 100% only once the target runs', () => {
    expect(progressOf(undefined, status(50, 100), 'Streaming')).toBe('50%');
    expect(progressOf('50%', status(60, 200), 'Streaming')).toBe('50%');
    expect(progressOf('50%', status(190, 200), 'Streaming')).toBe('95%');
    expect(progressOf('95%', status(200, 200), 'Commit')).toBe('99%');
    expect(progressOf('99%', status(200, 200), 'Succeeded')).toBe('100%');
    expect(progressOf(undefined, status(0), 'Pending')).toBeUndefined();
  });
});
