/**
 * One compromised node, on the real API server with the chart's RBAC and admission policy and the
 * node-bound tokens `devmig local` runs on (issue 16). The attacker holds what node-1 has: its
 * agent's certificate and key (node-1/state/tls.json) and its agent ServiceAccount's token
 * (node-1/kubeconfig). Each attack below went through before; each must now affect nothing but
 * node-1's own devices, and say why in status and as a Warning Event.
 */
import * as k8s from '@kubernetes/client-node';
import { once } from 'node:events';
import { connect as h2connect, type ClientHttp2Session } from 'node:http2';
import { connect as tcpConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { AgentClient, AgentCallError } from '../../src/agentapi/client.js';
import { API_VERSION } from '../../src/api/names.js';
import { Kube, type DeviceMigration } from '../../src/kube/kube.js';
import { readInstallIdentity } from '../../src/local/identity.js';
import { createCsr, issue, newKey } from '../../src/pki/x509.js';
import { newTicket } from '../../src/agent/identity.js';
import { clientOptions, type TlsMaterial } from '../../src/relay/h2.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';
import { localCluster } from '../helpers/local.js';

const PREFIX = '127.0.9';
/** Short, so that the tests of the timeouts take seconds (the defaults are 10 s and 30 s). */
const TIMEOUTS = { handshake: '2s', unauthenticated: '2s', requestBody: '2s', streamIdle: '3s' };
const cluster = localCluster('attacks', {
  nodes: 3, devices: 4, stateSize: '1Mi', loopbackPrefix: PREFIX,
  // node-3's agent sends crc32 streams (an attacker configures its own node as it likes); the others blake3.
  agentConfig: { '*': { timeouts: TIMEOUTS }, 'node-3': { digest: 'crc32' } },
});

const group = 'devmig.io';
const version = 'v1alpha1';
const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
const agentOf = (node: string) => cluster.env.agents.find((a) => a.node === node)!;
const digestOf = (node: string, device: string) => simDigest(cluster.simDir(node), device);
/** node-1's agent ServiceAccount token, as node-1 holds it. */
const attacker = () => Kube.fromFile(join(cluster.env.dir, 'node-1', 'kubeconfig'));

/** A controller certificate from the installation's CA (the admin may read the PKI Secret; no agent may). */
let controllerTls: TlsMaterial | undefined;
async function asController(): Promise<TlsMaterial> {
  if (controllerTls) return controllerTls;
  const id = await readInstallIdentity();
  const s = await cluster.kube.core.readNamespacedSecret({ name: 'devmig-pki', namespace: id.namespace });
  const ca = { certPem: Buffer.from(s.data!['ca.crt']!, 'base64').toString(), keyPem: Buffer.from(s.data!['ca.key']!, 'base64').toString() };
  const own = await issue(ca, 'controller', 1);
  controllerTls = { ca: ca.certPem, cert: own.certPem, key: own.keyPem };
  return controllerTls;
}
const client = async (node: string) => new AgentClient(agentOf(node).endpoint, await asController(), node, 10_000);

async function migrate(name: string, spec: Record<string, unknown>): Promise<void> {
  await cluster.kube.custom.createClusterCustomObject({ group, version, plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, spec: { strategy: 'StopCopy', ...spec },
  } });
}

/** Waits for `ok`; a migration that ends otherwise fails at once, with its status. */
function awaitMigration(name: string, what: string, ok: (m: DeviceMigration) => boolean, timeoutMs = 30_000): Promise<DeviceMigration> {
  return until<DeviceMigration>(`${name}: ${what}`, async () => {
    const m = await cluster.kube.getMigration(name);
    if (m && ok(m)) return m;
    if (m?.status?.phase && ['Succeeded', 'RolledBack', 'Failed', 'Cancelled'].includes(m.status.phase)) {
      throw new Error(`${name} ended ${m.status.phase} before ${what}: ${JSON.stringify(m.status.failure ?? m.status.conditions)}`);
    }
    return undefined;
  }, timeoutMs, 100);
}

const blockedOn = (reason: string) => (m: DeviceMigration) =>
  Boolean(m.status?.conditions?.some((c) => c.type === 'Blocked' && c.status === 'True' && c.reason === reason));

/** Waits for a Warning Event of `reason` about migration `name` (Events are told after the status is written). */
async function warned(name: string, reason: string): Promise<{ reason: string; message: string }> {
  return until(`a ${reason} Warning about ${name}`, async () => {
    const list = await cluster.kube.core.listNamespacedEvent({ namespace: 'default', fieldSelector: `involvedObject.name=${name}` });
    const e = list.items.find((x) => x.type === 'Warning' && x.reason === reason);
    return e && { reason, message: e.message ?? '' };
  }, 10_000, 100);
}

function signal(pid: number, sig: 'SIGSTOP' | 'SIGCONT'): void {
  process.kill(pid, sig);
}

describe('a DeviceNode endpoint aimed at another node\'s agent', () => {
  it('the controller refuses it (ForeignEndpoint, then PeerIdentityMismatch) and touches nothing; the real agent back, the migration goes where it was meant', async () => {
    const node2 = agentOf('node-2');
    const victims = await Promise.all([digestOf('node-2', 'sim-0'), digestOf('node-2', 'sim-1')]);
    // node-1 is the attacker's: its agent stops publishing, and its token rewrites its own DeviceNode.
    signal(agentOf('node-1').pid, 'SIGSTOP');
    try {
      const evil = attacker();
      await evil.custom.patchClusterCustomObject({ group, version, plural: 'devicenodes', name: 'node-1', body: { spec: { endpoint: node2.endpoint } } }, merge);
      await evil.custom.patchClusterCustomObjectStatus({ group, version, plural: 'devicenodes', name: 'node-1',
        body: { status: { ready: true, heartbeat: new Date().toISOString() } } }, merge);
      expect((await cluster.kube.getDeviceNode('node-1'))?.spec.endpoint).toBe(node2.endpoint); // the admission policy allows it: its own object

      await migrate('redirect', { source: { node: 'node-2', device: 'sim-0' }, target: { node: 'node-1', device: 'sim-1' } });
      // Defence in depth: node-2's address is not node-1's; refused before connecting.
      const foreign = await awaitMigration('redirect', 'held on ForeignEndpoint', blockedOn('ForeignEndpoint'));
      expect(foreign.status?.conditions?.find((c) => c.type === 'Blocked')?.message).toMatch(new RegExp(`${PREFIX}\\.3 is neither an address of node node-1`));
      expect((await warned('redirect', 'ForeignEndpoint')).message).toMatch(/neither an address of node node-1/);

      // Say node-1 and node-2 share an address (NAT, a reused IP): the endpoint passes, the identity does not.
      await cluster.kube.core.patchNodeStatus({ name: 'node-1', body: { status: { addresses: [
        { type: 'InternalIP', address: `${PREFIX}.2` }, { type: 'InternalIP', address: `${PREFIX}.3` }, { type: 'Hostname', address: 'node-1' },
      ] } } }, merge);
      const pinned = await awaitMigration('redirect', 'held on PeerIdentityMismatch', blockedOn('PeerIdentityMismatch'));
      expect(pinned.status?.conditions?.find((c) => c.type === 'Blocked')?.message).toMatch(/certificate for "agent:node-2", not "agent:node-1"/);
      expect((await warned('redirect', 'PeerIdentityMismatch')).message).toMatch(/not "agent:node-1"/);
      expect(pinned.status?.phase).toBe('Preparing');
      expect(pinned.status?.arcs ?? []).toEqual([]);
      // Not a byte, not a command reached node-2's devices.
      expect(await Promise.all([digestOf('node-2', 'sim-0'), digestOf('node-2', 'sim-1')])).toEqual(victims);
      for (const d of (await cluster.kube.getDeviceNode('node-2'))?.status?.devices ?? []) expect(d.migration).toBeUndefined();
    } finally {
      await cluster.kube.core.patchNodeStatus({ name: 'node-1', body: { status: { addresses: [
        { type: 'InternalIP', address: `${PREFIX}.2` }, { type: 'Hostname', address: 'node-1' },
      ] } } }, merge);
      signal(agentOf('node-1').pid, 'SIGCONT');
    }
    // node-1's agent republishes its own endpoint; the held step is asked again, of the real agent.
    const done = await awaitMigration('redirect', 'Succeeded', (m) => m.status?.phase === 'Succeeded', 60_000);
    expect(done.status?.targetDevice).toBe('sim-1');
    expect(await digestOf('node-1', 'sim-1')).toMatchObject({ state: 'RUNNING', sha256: victims[0].sha256 });
    expect(await digestOf('node-2', 'sim-1')).toEqual(victims[1]);
  }, 150_000);

  it('a source agent refuses a target whose certificate names another node, before the device stops', async () => {
    // As a controller that was fooled would ask: node-2 is to send to node-1, at node-3's endpoint
    // (and node-3 was prepared, as that controller would have). The source checks who answers.
    const [source, wrong] = await Promise.all([client('node-2'), client('node-3')]);
    const before = await Promise.all([digestOf('node-2', 'sim-2'), digestOf('node-3', 'sim-2')]);
    const ticket = newTicket();
    try {
      await wrong.receive('sim-2', { migration: 'src-redirect', op: 'prepare', ticket, sourceNode: 'node-2', commitOnVerify: { op: 'commit', resume: true } });
      const refused = await source.send('sim-2', { migration: 'src-redirect', op: 'send', ticket,
        target: { node: 'node-1', device: 'sim-2', endpoint: agentOf('node-3').endpoint } }).then(() => undefined, (e: unknown) => e);
      expect(refused).toBeInstanceOf(AgentCallError);
      expect(refused).toMatchObject({ status: 424, code: 'PeerIdentityMismatch' });
      expect((refused as Error).message).toMatch(/"agent:node-3", not "agent:node-1".*the device was not stopped \(RUNNING\)/);
      expect(await digestOf('node-2', 'sim-2')).toEqual(before[0]);
      const [target] = (await wrong.migration('src-redirect')).sessions;
      expect(target).toMatchObject({ role: 'target', phase: 'Waiting', bytes: 0 });
    } finally {
      await wrong.cancel('src-redirect', { op: 'cancel' }).catch(() => undefined);
      await wrong.release('sim-2', { migration: 'src-redirect', op: 'release' }).catch(() => undefined);
      await source.release('sim-2', { migration: 'src-redirect', op: 'release' }).catch(() => undefined);
      source.close();
      wrong.close();
    }
  }, 60_000);
});

describe('certificate requests approved by someone else', () => {
  const certs = (k: Kube) => k.config.makeApiClient(k8s.CertificatesV1Api);

  async function request(name: string, cn: string, ip: string): Promise<void> {
    const csr = await createCsr(cn, { ips: [ip] }, await newKey());
    await certs(attacker()).createCertificateSigningRequest({ body: { metadata: { name }, spec: {
      request: Buffer.from(csr).toString('base64'), signerName: 'devmig.io/agent', usages: ['digital signature', 'client auth', 'server auth'],
    } } });
  }

  async function approveAsAdmin(name: string): Promise<void> {
    const csr = await certs(cluster.kube).readCertificateSigningRequest({ name });
    await certs(cluster.kube).replaceCertificateSigningRequestApproval({ name, body: { ...csr, status: { ...csr.status, conditions: [
      ...(csr.status?.conditions ?? []), { type: 'Approved', status: 'True', reason: 'BulkApprove', message: 'kubectl certificate approve', lastUpdateTime: new Date() },
    ] } } });
  }

  it('are never signed against the signer\'s rules: CN=controller, or another node, ends Failed with the reason', async () => {
    // Approved while the controller is down (here: stopped), so the approval lands before its own pass.
    const controllerPid = cluster.env.controller.pid;
    signal(controllerPid, 'SIGSTOP');
    try {
      await request('as-controller', 'controller', `${PREFIX}.2`);
      await request('as-node-2', 'agent:node-2', `${PREFIX}.3`);
      await approveAsAdmin('as-controller');
      await approveAsAdmin('as-node-2');
    } finally {
      signal(controllerPid, 'SIGCONT');
    }
    for (const [name, why] of [['as-controller', /never issued through the CSR API/], ['as-node-2', /may only ask for "CN=agent:node-1"/]] as const) {
      const settled = await until(`${name} settled`, async () => {
        const r = await certs(cluster.kube).readCertificateSigningRequest({ name });
        if (r.status?.certificate) throw new Error(`${name} was signed: ${Buffer.from(r.status.certificate, 'base64').toString().slice(0, 80)}...`);
        return r.status?.conditions?.find((c) => c.type === 'Failed');
      }, 30_000, 100);
      expect(settled).toMatchObject({ type: 'Failed', status: 'True', reason: 'WrongIdentity' });
      expect(settled.message).toMatch(why);
      expect(settled.message).toMatch(/approved, but not signed/);
    }
    // The controller goes on signing what it should: a request of node-1's for itself.
    await request('node-1-own', 'agent:node-1', `${PREFIX}.2`);
    await until('node-1-own signed', async () => (await certs(cluster.kube).readCertificateSigningRequest({ name: 'node-1-own' })).status?.certificate, 30_000, 100);
  }, 90_000);
});

describe('timeouts', () => {
  /** Resolves with how long `socket` (or session) stayed open, or rejects if still open after `ms`. */
  function closedWithin(socket: { destroyed: boolean; once(event: 'close', f: () => void): unknown }, ms: number): Promise<number> {
    const opened = Date.now();
    return new Promise((resolve, reject) => {
      if (socket.destroyed) return resolve(0);
      const timer = setTimeout(() => reject(new Error(`still open after ${ms} ms`)), ms);
      socket.once('close', () => { clearTimeout(timer); resolve(Date.now() - opened); });
    });
  }

  it('sessions that never show a client certificate are closed: 200 of them, TLS with and without HTTP/2, and bare TCP', async () => {
    const { endpoint } = agentOf('node-2');
    const { hostname: host, port } = new URL(endpoint);
    const ca = (await asController()).ca;
    const open = (make: () => Socket, ready: string) => Array.from({ length: 50 }, async () => {
      const s = make();
      s.on('error', () => undefined);
      s.resume(); // reads, so that the server's closing is seen here (it sends nothing else)
      if (ready) await once(s, ready);
      return s;
    });
    const sockets = await Promise.all([
      ...open(() => tlsConnect({ host, port: Number(port), ca, ALPNProtocols: ['h2'], servername: '' }), 'secureConnect'),
      ...open(() => tlsConnect({ host, port: Number(port), ca, ALPNProtocols: ['h2'], servername: '' }), 'secureConnect'),
      ...open(() => tlsConnect({ host, port: Number(port), ca, servername: '' }), 'secureConnect'),
      ...open(() => tcpConnect({ host, port: Number(port) }), 'connect'),
    ]);
    // Meanwhile such a session may reach the health endpoints, and nothing else.
    const anon = h2connect(endpoint, { ca });
    anon.on('error', () => undefined);
    expect(await status(anon, 'GET', '/healthz')).toBe(200);
    expect(await status(anon, 'GET', '/v1/devices')).toBe(401);
    // A controller's session is not cut: it may stay and be reused.
    const ctl = h2connect(endpoint, clientOptions(await asController(), 'node-2'));
    ctl.on('error', () => undefined);
    await once(ctl, 'connect');
    const limit = 2000 + 4000; // timeouts.unauthenticated and handshake, and a loaded machine's slack
    const lifetimes = await Promise.all([...sockets, anon].map((s) => closedWithin(s, limit)));
    expect(lifetimes).toHaveLength(201);
    expect(ctl.closed || ctl.destroyed).toBe(false);
    expect(await status(ctl, 'GET', '/v1/devices')).toBe(200);
    ctl.close();
  }, 60_000);

  it('a request body that stops mid-way gets 408 RequestTimeout, and changes nothing', async () => {
    const { endpoint } = agentOf('node-2');
    const s = h2connect(endpoint, clientOptions(await asController(), 'node-2'));
    s.on('error', () => undefined);
    try {
      const before = await digestOf('node-2', 'sim-3');
      const body = JSON.stringify({ migration: 'stalled', op: 'a', state: 'STOP' });
      const req = s.request({ ':method': 'POST', ':path': '/v1/devices/sim-3/state', 'content-type': 'application/json', 'content-length': String(body.length) });
      req.on('error', () => undefined);
      req.write(body.slice(0, 10)); // ...and nothing more, never the end
      const started = Date.now();
      const answer = await Promise.race([
        once(req, 'response').then(([h]) => Number((h as Record<string, string>)[':status'])),
        new Promise<string>((r) => setTimeout(() => r('no answer in 8 s'), 8000)),
      ]);
      expect(answer).toBe(408);
      expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
      expect(await digestOf('node-2', 'sim-3')).toEqual(before);
    } finally {
      s.close();
    }
  }, 30_000);

  it('a stream that stalls mid-way is aborted (StreamStalled), its session slot freed, and the migration rolled back: source RUNNING, digest unchanged', async () => {
    const before = await digestOf('node-1', 'sim-3');
    const source = agentOf('node-1');
    // 1 MiB at 256 KiB/s: four seconds of stream, stopped once it moves.
    await migrate('stall', { source: { node: 'node-1', device: 'sim-3' }, target: { node: 'node-2', device: 'sim-3' }, limits: { bandwidth: '256Ki' } });
    await awaitMigration('stall', 'streaming', (m) => (m.status?.transfer?.bytes ?? 0) > 0);
    signal(source.pid, 'SIGSTOP'); // the source stops sending, its connection open
    const target = await client('node-2');
    try {
      const stalled = await until('the target gives up on the stream', async () => {
        const [s] = (await target.migration('stall')).sessions;
        return s?.phase === 'Failed' ? s : undefined;
      }, 15_000, 200);
      expect(stalled.error).toMatchObject({ code: 'StreamStalled' });
      expect(stalled.error?.message).toMatch(/sent nothing for 3000 ms/);
      const node = await target.call<{ sessions: { active: number } }>('GET', '/v1/devices');
      expect(node.sessions.active).toBe(0);
    } finally {
      signal(source.pid, 'SIGCONT');
      target.close();
    }
    const m = await until('stall rolled back', async () => {
      const x = await cluster.kube.getMigration('stall');
      return x?.status?.phase && ['Succeeded', 'RolledBack', 'Failed'].includes(x.status.phase) ? x : undefined;
    }, 60_000, 100);
    expect(m.status).toMatchObject({ phase: 'RolledBack', failure: { reason: 'StreamStalled' } });
    expect(await digestOf('node-1', 'sim-3')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
    expect((await digestOf('node-2', 'sim-3')).state).toBe('RUNNING');
    await warned('stall', 'StreamStalled');
  }, 120_000);
});

it('a crc32 stream to a target that accepts blake3 only is refused before a byte is written; rolled back', async () => {
  const before = await digestOf('node-3', 'sim-0');
  await migrate('weak-digest', { source: { node: 'node-3', device: 'sim-0' }, target: { node: 'node-1', device: 'sim-2' } });
  const m = await until('weak-digest settled', async () => {
    const x = await cluster.kube.getMigration('weak-digest');
    return x?.status?.phase && ['Succeeded', 'RolledBack', 'Failed'].includes(x.status.phase) ? x : undefined;
  }, 60_000, 100);
  expect(m.status).toMatchObject({ phase: 'RolledBack', failure: { reason: 'DigestRefused' } });
  expect(m.status?.failure?.message).toMatch(/"crc32" is not one node node-1 accepts \(blake3\)/);
  expect(m.status?.transfer?.digest ?? '').not.toMatch(/^crc32:/);
  expect(await digestOf('node-3', 'sim-0')).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
  expect((await digestOf('node-1', 'sim-2')).state).toBe('RUNNING');
  await warned('weak-digest', 'DigestRefused');
}, 90_000);

async function status(s: ClientHttp2Session, method: string, path: string): Promise<number> {
  const req = s.request({ ':method': method, ':path': path });
  req.on('error', () => undefined);
  req.end();
  const [h] = (await once(req, 'response')) as [Record<string, string>];
  req.resume();
  return Number(h[':status']);
}

