/**
 * The fault matrix, network and stream: the link to the target cut, black-holed, corrupted or cut
 * short by a proxy the test controls (TLS runs end to end through it); a stream the source's driver
 * truncates or corrupts; a slow target; a target that refuses RESUMING -> STOP; a source that falls
 * into ERROR mid-STOP_COPY; an arc that fails with EIO. Each ends in a bounded time with DESIGN.md's
 * invariants; the table is printed.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import { Kube } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { checkInvariants, checkOwnership, row, settled, table, type Expect } from '../helpers/faults.js';
import { FaultProxy, type ProxyMode } from '../helpers/proxy.js';

let dir: string;
let env: LocalState;
let kube: Kube;
let proxy: FaultProxy;
const rows: string[][] = [];
const PREFIX = '127.0.14';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-network-'));
  // node-2 (the target) is reached through the proxy, by the source agent and the controller alike.
  proxy = await new FaultProxy({ host: `${PREFIX}.3`, port: 9444 }, { host: `${PREFIX}.3`, port: 9443 }).start();
  env = await localUp({ dir, nodes: 2, devices: 12, stateSize: '8Mi', loopbackPrefix: PREFIX, advertise: { 'node-2': proxy.endpoint } }, () => undefined);
  kube = Kube.fromFile(env.kubeconfig);
}, 20 * 60_000);

afterAll(async () => {
  await proxy.stop();
  await localDown(dir, () => undefined);
  if (process.env.DEVMIG_FAULT_LOGS) await import('node:fs/promises').then((f) => f.cp(join(dir, 'logs'), join(process.env.DEVMIG_FAULT_LOGS!, 'network'), { recursive: true })).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
  process.stdout.write(table(rows));
}, 60_000);

const simDir = (node: string) => env.agents.find((a) => a.node === node)!.simDir;
let devices = 0;

interface Scenario {
  /** Faults for the source's (node-1) and target's (node-2) simulated device. */
  readonly faults?: { source?: object[]; target?: object[] };
  /** What the proxy does once the stream is under way, and for how long before it passes again. */
  readonly link?: { mode: ProxyMode; bytes?: number; forMs: number };
  readonly bandwidth?: string;
  readonly expect?: Expect;
}

async function run(name: string, s: Scenario): Promise<void> {
  const device = `sim-${devices++}`;
  for (const [node, faults] of [['node-1', s.faults?.source], ['node-2', s.faults?.target]] as const) {
    if (faults) await writeFile(join(simDir(node), device, 'faults.json'), JSON.stringify(faults));
  }
  const started = Date.now();
  const before = await simDigest(simDir('node-1'), device);
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-1', device }, target: { node: 'node-2', device }, strategy: 'StopCopy', ...(s.bandwidth ? { limits: { bandwidth: s.bandwidth } } : {}) },
  } });
  if (s.link) {
    await until(`${name} streaming`, async () => ((await kube.getMigration(name))?.status?.transfer?.bytes ?? 0) > 2 ** 20, 30_000, 20);
    proxy.set(s.link.mode, s.link.bytes);
    await new Promise((r) => setTimeout(r, s.link!.forMs));
    proxy.set('pass');
  }
  const m = await settled(kube, name, 150_000);
  for (const node of ['node-1', 'node-2']) await rm(join(simDir(node), device, 'faults.json'), { force: true });
  const src = await simDigest(simDir('node-1'), device);
  const dst = await simDigest(simDir('node-2'), device);
  rows.push(row(name, m, [...checkInvariants(m, before, src, dst, s.expect), ...(await checkOwnership(kube, m, before, src))], started));
}

const T = 240_000;
describe('the link between the agents', () => {
  it('cut for 5 s mid-stream', () => run('link-cut', { bandwidth: '4Mi', link: { mode: 'cut', forMs: 5000 } }), T);
  it('black-holed for 40 s mid-stream (connections open, nothing moves)', () => run('link-blackhole', { bandwidth: '4Mi', link: { mode: 'blackhole', forMs: 40_000 } }), T);
  it('a byte corrupted in flight', () => run('link-corrupt', { bandwidth: '4Mi', link: { mode: 'corrupt', forMs: 3000 } }), T);
  it('connections cut after 256 KiB more', () => run('link-truncate', { bandwidth: '4Mi', link: { mode: 'truncate', bytes: 256 * 1024, forMs: 3000 } }), T);
});

describe('the stream and the devices', () => {
  it('the source driver truncates its stream', () => run('stream-truncated', { faults: { source: [{ stream: 'truncate', atByte: 3 * 2 ** 20 }] } }), T);
  it('the source driver corrupts its stream', () => run('stream-corrupt', { faults: { source: [{ stream: 'corrupt', atByte: 3 * 2 ** 20 }] } }), T);
  it('a slow target (2 MiB/s writes)', () => run('slow-target', { faults: { target: [{ stream: 'slow-write', bytesPerSecond: 2 * 2 ** 20 }] } }), T);
  it('the target refuses RESUMING -> STOP', () => run('target-refuses-commit', { faults: { target: [{ arc: 'RESUMING>STOP', errno: 'EINVAL', then: 'ERROR' }] } }), T);
  it('the source falls into ERROR mid-STOP_COPY', () => run('source-error', {
    faults: { source: [{ stream: 'error', atByte: 2 ** 20, errno: 'EIO' }] },
    expect: { sourceMayBeLost: true, outcomes: ['RolledBack', 'Failed'] },
  }), T);
  it('an arc of the source fails with EIO', () => run('arc-eio', { faults: { source: [{ arc: 'STOP>STOP_COPY', errno: 'EIO', times: 1 }] } }), T);
});
