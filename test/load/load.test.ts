/**
 * Load: DEVMIG_LOAD_MIGRATIONS (200) DeviceMigrations of small simulated devices across
 * DEVMIG_LOAD_NODES (20) nodes, all created at once. All must succeed; no agent may ever run more
 * sessions than its maxSessions (sampled all along: the controller must back off and retry on 429,
 * not fail); the run reports the controller's peak memory and the API requests per migration.
 */
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type SecureClientSessionOptions } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import { Kube } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { clientOptions } from '../../src/relay/h2.js';
import { until } from '../helpers/agents.js';
import { FINAL } from '../helpers/faults.js';

const NODES = Number(process.env.DEVMIG_LOAD_NODES ?? 20);
const MIGRATIONS = Number(process.env.DEVMIG_LOAD_MIGRATIONS ?? 200);
const PER_NODE = Math.ceil(MIGRATIONS / NODES);

let dir: string;
let env: LocalState;
let kube: Kube;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-load-'));
  // Each node sources PER_NODE migrations and has as many free devices to receive into.
  env = await localUp({ dir, nodes: NODES, devices: 2 * PER_NODE, stateSize: '128Ki', loopbackPrefix: '127.0.15' }, () => undefined);
  kube = Kube.fromFile(env.kubeconfig);
}, 20 * 60_000);

afterAll(async () => {
  await localDown(dir, () => undefined);
  await rm(dir, { recursive: true, force: true });
}, 120_000);

/** apiserver_request_total, summed per resource, through the admin's credentials. */
async function apiRequests(): Promise<Map<string, number>> {
  const cluster = kube.config.getCurrentCluster()!;
  const opts: { ca?: Buffer; cert?: Buffer; key?: Buffer } = {};
  await kube.config.applyToHTTPSOptions(opts);
  const text = await getText(cluster.server, { ca: opts.ca, cert: opts.cert, key: opts.key }, '/metrics');
  const out = new Map<string, number>();
  for (const [, labels, v] of text.matchAll(/^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$/gm)) {
    const resource = /resource="([^"]*)"/.exec(labels!)?.[1] ?? '';
    out.set(resource, (out.get(resource) ?? 0) + Number(v));
    out.set('*', (out.get('*') ?? 0) + Number(v));
  }
  return out;
}

/** The body of one GET over HTTP/2 with TLS (the API server's metrics, an agent's inventory). */
async function getText(url: string, tls: SecureClientSessionOptions, path: string): Promise<string> {
  const s = connect(url, tls);
  s.on('error', () => undefined);
  try {
    const req = s.request({ ':path': path });
    req.end();
    await once(req, 'response');
    let text = '';
    for await (const c of req) text += String(c);
    return text;
  } finally {
    s.close();
  }
}

/** The most sessions any agent reported at once, against its limit. */
async function sampleSessions(peak: Map<string, { active: number; max: number }>, material: Parameters<typeof clientOptions>[0]): Promise<void> {
  await Promise.all(env.agents.map(async (a) => {
    try {
      const { sessions } = JSON.parse(await getText(a.endpoint, clientOptions(material, a.node), '/v1/devices')) as { sessions: { active: number; max: number } };
      const was = peak.get(a.node);
      if (!was || sessions.active > was.active) peak.set(a.node, sessions);
    } catch { /* a busy moment: the next sample counts */ }
  }));
}

it(`${MIGRATIONS} migrations across ${NODES} nodes all succeed within the per-node limits`, async () => {
  // The agents' own certificate is a cluster identity; reading their inventory needs no more.
  const material = JSON.parse(await readFile(join(env.agents[0]!.stateDir, 'tls.json'), 'utf8')) as Parameters<typeof clientOptions>[0];
  const requestsBefore = await apiRequests();
  const started = Date.now();
  const names: string[] = [];
  await Promise.all(Array.from({ length: MIGRATIONS }, async (_, i) => {
    const from = (i % NODES) + 1;
    const to = (from % NODES) + 1;
    const name = `load-${i}`;
    names.push(name);
    await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
      apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
      spec: { source: { node: `node-${from}`, device: `sim-${Math.floor(i / NODES)}` }, target: { node: `node-${to}` }, strategy: 'StopCopy' },
    } });
  }));
  const peak = new Map<string, { active: number; max: number }>();
  let sampling = true;
  const sampler = (async () => { while (sampling) { await sampleSessions(peak, material); await new Promise((r) => setTimeout(r, 50)); } })();
  const phases = await until('every migration final', async () => {
    const list = await kube.listMigrations();
    const final = list.filter((m) => FINAL.includes(m.status?.phase ?? ''));
    return final.length === MIGRATIONS ? list : undefined;
  }, 15 * 60_000, 1000);
  sampling = false;
  await sampler;
  const seconds = (Date.now() - started) / 1000;
  const requestsAfter = await apiRequests();
  const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${env.controller.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
  const per = (r: string) => ((requestsAfter.get(r) ?? 0) - (requestsBefore.get(r) ?? 0)) / MIGRATIONS;
  const byPhase = phases.reduce<Record<string, number>>((acc, m) => ({ ...acc, [m.status!.phase!]: (acc[m.status!.phase!] ?? 0) + 1 }), {});
  const maxSeen = Math.max(...[...peak.values()].map((p) => p.active));
  const failures = phases.filter((m) => m.status?.phase !== 'Succeeded')
    .reduce<Record<string, string>>((acc, m) => ({ ...acc, [m.status?.failure?.reason ?? '?']: `${m.metadata.name}: ${m.status?.failure?.message ?? ''}` }), {});
  const report = {
    migrations: MIGRATIONS, nodes: NODES, seconds: Number(seconds.toFixed(1)), phases: byPhase, failures,
    peak_sessions_per_node: maxSeen, max_sessions: [...peak.values()][0]?.max,
    controller_peak_rss_mib: Number(hwm.toFixed(1)),
    api_requests_per_migration: Number(per('*').toFixed(1)),
    devicemigration_requests_per_migration: Number(per('devicemigrations').toFixed(1)),
  };
  process.stdout.write(`\nLOAD ${JSON.stringify(report)}\n`);
  expect(byPhase).toEqual({ Succeeded: MIGRATIONS });
  // No device received twice under load: each target holds its own migration's state, each source
  // was reset and is free (as the agents publish it, once their last updates are in).
  const owners = await until('every device published', async () => {
    const held = new Map<string, string | undefined>();
    for (const dn of await kube.listDeviceNodes()) for (const d of dn.status?.devices ?? []) held.set(`${dn.metadata.name}/${d.name}`, d.occupancy?.state === 'Holding' ? d.occupancy.migration : undefined);
    return phases.every((m) => held.get(`${m.spec.target.node}/${m.status!.targetDevice!}`) === m.metadata.name && !held.get(`${m.spec.source.node}/${m.spec.source.device}`)) ? held : undefined;
  }, 60_000, 1000);
  expect(new Set(phases.map((m) => owners.get(`${m.spec.target.node}/${m.status!.targetDevice!}`))).size).toBe(MIGRATIONS);
  expect(peak.size).toBe(NODES);
  for (const [, p] of peak) expect(p.active).toBeLessThanOrEqual(p.max);
  expect(names).toHaveLength(MIGRATIONS);
}, 30 * 60_000);
