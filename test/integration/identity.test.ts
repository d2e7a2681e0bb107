/**
 * Least privilege, on the real API server: the controller and the agents run on TokenRequest tokens of
 * the install's ServiceAccounts (deploy/devmig.yaml, rendered from the chart), under its RBAC and its
 * admission policy. A migration succeeds on those tokens alone; what each token must not do is refused;
 * certificate requests that do not come from the node they name are denied.
 */
import * as k8s from '@kubernetes/client-node';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { API_VERSION } from '../../src/api/names.js';
import { Kube, type DeviceMigration } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { readInstallIdentity, serviceAccountToken, tokenKubeconfig, type InstallIdentity } from '../../src/local/identity.js';
import { createCsr, issuedBy, newKey } from '../../src/pki/x509.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';

let dir: string;
let env: LocalState;
let admin: Kube;
let id: InstallIdentity;
/** node-1's agent, as its own kubeconfig says (the token the local env gave it). */
let agent1: Kube;
let controller: Kube;

const group = 'devmig.io';
const version = 'v1alpha1';

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-identity-'));
  env = await localUp({ dir, nodes: 2, devices: 2, stateSize: '1Mi', loopbackPrefix: '127.0.8' }, () => undefined);
  admin = Kube.fromFile(env.kubeconfig);
  id = await readInstallIdentity();
  agent1 = Kube.fromFile(join(dir, 'node-1', 'kubeconfig'));
  controller = Kube.fromFile(join(dir, 'controller.kubeconfig'));
}, 20 * 60_000);

afterAll(async () => {
  await localDown(dir, () => undefined);
  if (!process.env.DEVMIG_KEEP) await rm(dir, { recursive: true, force: true });
}, 60_000);

/** The HTTP status of a refused call, or 0 if it was allowed. */
async function refused(p: Promise<unknown>): Promise<{ code: number; message: string }> {
  try {
    await p;
    return { code: 0, message: '' };
  } catch (e) {
    const err = e as { code?: number; body?: string };
    const body = typeof err.body === 'string' ? (JSON.parse(err.body) as { message?: string }) : {};
    return { code: err.code ?? -1, message: body.message ?? String(e) };
  }
}

async function whoami(kube: Kube): Promise<k8s.V1UserInfo> {
  const api = kube.config.makeApiClient(k8s.AuthenticationV1Api);
  const r = await api.createSelfSubjectReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' } });
  return r.status!.userInfo!;
}

it('the processes run on ServiceAccount tokens, the agent\'s bound to its node', async () => {
  for (const f of ['controller.kubeconfig', 'node-1/kubeconfig', 'node-2/kubeconfig']) {
    const doc = parse(await readFile(join(dir, f), 'utf8')) as { users: Array<{ user: Record<string, unknown> }> };
    expect(Object.keys(doc.users[0]!.user)).toEqual(['token']);
  }
  expect((await whoami(controller)).username).toBe(`system:serviceaccount:${id.namespace}:${id.controllerServiceAccount}`);
  const a = await whoami(agent1);
  expect(a.username).toBe(`system:serviceaccount:${id.namespace}:${id.agentServiceAccount}`);
  expect(a.extra?.['authentication.kubernetes.io/node-name']).toEqual(['node-1']);
});

it('a migration succeeds with nothing but those tokens and the certificates the controller signed', async () => {
  const before = await simDigest(env.agents[0]!.simDir, 'sim-0');
  await admin.custom.createClusterCustomObject({ group, version, plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name: 'on-tokens' },
    spec: { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, strategy: 'StopCopy' },
  } });
  const m = await until<DeviceMigration>('on-tokens finished', async () => {
    const x = await admin.getMigration('on-tokens');
    return x?.status?.phase === 'Succeeded' || x?.status?.phase === 'Failed' || x?.status?.phase === 'RolledBack' ? x : undefined;
  }, 60_000, 100);
  expect(m.status?.phase).toBe('Succeeded');
  const after = await simDigest(env.agents[1]!.simDir, m.status!.targetDevice!);
  expect(after).toMatchObject({ state: 'RUNNING', sha256: before.sha256 });
  // The agent's certificate: CN agent:node-1, its address, signed by the CA the controller published.
  const saved = JSON.parse(await readFile(join(env.agents[0]!.stateDir, 'tls.json'), 'utf8')) as { ca: string; cert: string };
  const cm = await admin.core.readNamespacedConfigMap({ name: 'devmig-ca', namespace: id.namespace });
  expect(saved.ca).toBe(cm.data?.['ca.crt']);
  expect(issuedBy(saved.cert, saved.ca)).toBe(true);
  const x = new X509Certificate(saved.cert);
  expect(x.subject).toBe('CN=agent:node-1');
  expect(x.subjectAltName).toBe('IP Address:127.0.8.2');
}, 90_000);

it('an agent writes its own DeviceNode, and is refused another node\'s, naming why', async () => {
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  const own = await refused(agent1.custom.patchClusterCustomObjectStatus({ group, version, plural: 'devicenodes', name: 'node-1', body: { status: { ready: true } } }, merge));
  expect(own.code).toBe(0);
  const before = await admin.custom.getClusterCustomObject({ group, version, plural: 'devicenodes', name: 'node-2' }) as { metadata: { resourceVersion: string } };
  const other = await refused(agent1.custom.patchClusterCustomObjectStatus({ group, version, plural: 'devicenodes', name: 'node-2', body: { status: { ready: false } } }, merge));
  expect(other.code).toBe(403);
  expect(other.message).toMatch(/only write the DeviceNode of its own node \(node-1\), not node-2/);
  expect((await refused(agent1.custom.patchClusterCustomObject({ group, version, plural: 'devicenodes', name: 'node-2', body: { spec: { endpoint: 'https://6.6.6.6:9443' } } }, merge))).code).toBe(403);
  expect((await refused(agent1.custom.deleteClusterCustomObject({ group, version, plural: 'devicenodes', name: 'node-2' }))).code).toBe(403);
  expect((await refused(agent1.custom.createClusterCustomObject({ group, version, plural: 'devicenodes', body: {
    apiVersion: API_VERSION, kind: 'DeviceNode', metadata: { name: 'node-9' }, spec: { node: 'node-9', endpoint: 'https://6.6.6.6:9443', identity: 'agent:node-9' },
  } }))).code).toBe(403);
  const after = await admin.custom.getClusterCustomObject({ group, version, plural: 'devicenodes', name: 'node-2' }) as { metadata: { resourceVersion: string } };
  expect(after.metadata.resourceVersion).toBe(before.metadata.resourceVersion);
});

it('an agent can neither write a DeviceMigration nor read the PKI', async () => {
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  const spec = await refused(agent1.custom.patchClusterCustomObject({ group, version, plural: 'devicemigrations', name: 'on-tokens', body: { spec: { cancel: true } } }, merge));
  expect(spec.code).toBe(403);
  expect(spec.message).toMatch(/cannot patch resource "devicemigrations"/);
  expect((await refused(agent1.custom.patchClusterCustomObjectStatus({ group, version, plural: 'devicemigrations', name: 'on-tokens', body: { status: { phase: 'Failed' } } }, merge))).code).toBe(403);
  expect((await refused(agent1.custom.createClusterCustomObject({ group, version, plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name: 'by-agent' }, spec: { source: { node: 'node-2', device: 'sim-0' }, target: { node: 'node-1' } },
  } }))).code).toBe(403);
  expect((await refused(agent1.core.readNamespacedSecret({ name: 'devmig-pki', namespace: id.namespace }))).code).toBe(403);
  expect((await refused(agent1.core.listSecretForAllNamespaces())).code).toBe(403);
  expect((await admin.getMigration('on-tokens'))?.spec.cancel).not.toBe(true);
});

it('the controller may not write DeviceNodes, read other Secrets, or run pods', async () => {
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  expect((await refused(controller.custom.patchClusterCustomObject({ group, version, plural: 'devicenodes', name: 'node-1', body: { spec: { endpoint: 'https://6.6.6.6:9443' } } }, merge))).code).toBe(403);
  expect((await refused(controller.core.listNamespacedSecret({ namespace: id.namespace }))).code).toBe(403);
  expect((await refused(controller.core.readNamespacedSecret({ name: 'devmig-pki', namespace: id.namespace }))).code).toBe(0);
  expect((await refused(controller.core.createNamespacedPod({ namespace: id.namespace, body: { metadata: { name: 'x' }, spec: { containers: [{ name: 'x', image: 'x' }] } } }))).code).toBe(403);
});

describe('certificate requests', () => {
  const certs = (k: Kube) => k.config.makeApiClient(k8s.CertificatesV1Api);

  async function ask(k: Kube, name: string, cn: string, ips: string[]): Promise<k8s.V1CertificateSigningRequestCondition> {
    const csr = await createCsr(cn, { ips }, await newKey());
    await certs(k).createCertificateSigningRequest({ body: { metadata: { name }, spec: {
      request: Buffer.from(csr).toString('base64'), signerName: 'devmig.io/agent', usages: ['digital signature', 'client auth'],
    } } });
    return until(`${name} settled`, async () => {
      const r = await certs(admin).readCertificateSigningRequest({ name });
      return r.status?.conditions?.find((c) => c.type === 'Approved' || c.type === 'Denied');
    }, 20_000, 100);
  }

  it('node-1\'s agent is denied a certificate for node-2', async () => {
    const c = await ask(agent1, 'impostor', 'agent:node-2', ['127.0.8.3']);
    expect(c).toMatchObject({ type: 'Denied', reason: 'WrongIdentity' });
    expect(c.message).toMatch(/may only ask for "CN=agent:node-1"/);
  });

  it('node-1\'s agent is denied an address that is not node-1\'s', async () => {
    const c = await ask(agent1, 'foreign-ip', 'agent:node-1', ['10.9.9.9']);
    expect(c).toMatchObject({ type: 'Denied', reason: 'ForeignAddress' });
  });

  it('anyone but the agent ServiceAccount is denied, and the controller is not fooled by the CN', async () => {
    const c = await ask(admin, 'from-admin', 'agent:node-1', ['127.0.8.2']);
    expect(c).toMatchObject({ type: 'Denied', reason: 'NotAnAgent' });
  });

  it('a token bound to no node is denied', async () => {
    const token = await serviceAccountToken(admin, id.namespace, id.agentServiceAccount);
    const unbound = Kube.fromFile(await tokenKubeconfig(admin, token, 'unbound', join(dir, 'unbound.kubeconfig')));
    const c = await ask(unbound, 'unbound', 'agent:node-1', ['127.0.8.2']);
    expect(c).toMatchObject({ type: 'Denied', reason: 'NoNodeBinding' });
    // ...and the admission policy keeps it off every DeviceNode.
    const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
    const r = await refused(unbound.custom.patchClusterCustomObjectStatus({ group, version, plural: 'devicenodes', name: 'node-1', body: { status: { ready: false } } }, merge));
    expect(r.code).toBe(403);
    expect(r.message).toMatch(/its token names no node/);
  });

  it('a denied request gets no certificate', async () => {
    const r = await certs(admin).readCertificateSigningRequest({ name: 'impostor' });
    expect(r.status?.certificate).toBeUndefined();
  });
});
