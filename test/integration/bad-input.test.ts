/**
 * Bad input, a table of it: each invalid DeviceMigration is refused by the real API server (schema and
 * CEL rules from src/api/types.ts) or failed by the controller, with an error that names the field,
 * and nothing else changes — nothing stored on refusal, no device touched, the source still RUNNING
 * with its digest unchanged.
 */
import * as k8s from '@kubernetes/client-node';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_VERSION } from '../../src/api/names.js';
import { Kube, type DeviceMigration } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalState } from '../../src/local/env.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { until } from '../helpers/agents.js';

let dir: string;
let env: LocalState;
let kube: Kube;
const at = { group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations' };
const ok = { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' } };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-badinput-'));
  env = await localUp({ dir, nodes: 2, devices: 2, stateSize: '256Ki', loopbackPrefix: '127.0.10' }, () => undefined);
  kube = Kube.fromFile(env.kubeconfig);
  // A Node without an agent: validation must tell it apart from a node that does not exist.
  await kube.core.createNode({ body: { metadata: { name: 'node-9' } } });
}, 20 * 60_000);

afterAll(async () => {
  await localDown(dir, () => undefined);
  if (!process.env.DEVMIG_KEEP) await rm(dir, { recursive: true, force: true });
}, 60_000);

let n = 0;
async function create(body: Record<string, unknown>): Promise<{ name: string; code: number; message: string }> {
  const name = (body.metadata as { name?: string } | undefined)?.name ?? `bad-${++n}`;
  try {
    await kube.custom.createClusterCustomObject({ ...at, fieldValidation: 'Strict', body: { apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, ...body } });
    return { name, code: 0, message: '' };
  } catch (e) {
    const err = e as { code?: number; body?: string };
    return { name, code: err.code ?? -1, message: typeof err.body === 'string' ? ((JSON.parse(err.body) as { message?: string }).message ?? err.body) : String(e) };
  }
}

async function exists(name: string): Promise<boolean> {
  return (await kube.getMigration(name)) !== undefined;
}

const long = 'd'.repeat(300);
/** Refused at the API server: [what, body (spec or whole object), the field the error must name, and a word of the fix]. */
const refused: Array<[string, Record<string, unknown>, RegExp]> = [
  ['no spec', {}, /spec: Required value/],
  ['no source', { spec: { target: { node: 'node-2' } } }, /spec\.source: Required value/],
  ['no target', { spec: { source: ok.source } }, /spec\.target: Required value/],
  ['no source device', { spec: { source: { node: 'node-1' }, target: ok.target } }, /spec\.source\.device: Required value/],
  ['empty source node', { spec: { ...ok, source: { node: '', device: 'sim-0' } } }, /spec\.source\.node.*(at least 1|should match)/],
  ['uppercase node', { spec: { ...ok, source: { node: 'Node-1', device: 'sim-0' } } }, /spec\.source\.node.*should match/],
  ['a slash in a device', { spec: { ...ok, source: { node: 'node-1', device: 'pci/0000' } } }, /spec\.source\.device.*should match/],
  ['path traversal in a device', { spec: { ...ok, source: { node: 'node-1', device: '../../etc' } } }, /spec\.source\.device.*should match/],
  ['a device of 300 characters', { spec: { ...ok, source: { node: 'node-1', device: long } } }, /spec\.source\.device.*(may not be more than 253|Too long)/],
  ['spaces in the target node', { spec: { ...ok, target: { node: 'node 2' } } }, /spec\.target\.node.*should match/],
  ['a NUL in the target device', { spec: { ...ok, target: { node: 'node-2', device: 'sim\u00000' } } }, /spec\.target\.device.*should match/],
  ['an unknown strategy', { spec: { ...ok, strategy: 'Fast' } }, /spec\.strategy.*Unsupported value: "Fast"/],
  ['strategy of the wrong case', { spec: { ...ok, strategy: 'precopy' } }, /spec\.strategy.*Unsupported value/],
  ['a negative bandwidth', { spec: { ...ok, limits: { bandwidth: '-5Mi' } } }, /spec\.limits\.bandwidth.*should match/],
  ['a bandwidth in words', { spec: { ...ok, limits: { bandwidth: 'lots' } } }, /spec\.limits\.bandwidth.*should match/],
  ['a zero bandwidth', { spec: { ...ok, limits: { bandwidth: '0' } } }, /spec\.limits\.bandwidth must be positive/],
  ['a bandwidth as a number', { spec: { ...ok, limits: { bandwidth: 500 } } }, /spec\.limits\.bandwidth.*must be of type string/],
  ['a timeout in words', { spec: { ...ok, limits: { timeout: '10 minutes' } } }, /spec\.limits\.timeout.*should match/],
  ['a zero timeout', { spec: { ...ok, limits: { timeout: '0s' } } }, /spec\.limits\.timeout must be positive/],
  ['a negative maxDowntime', { spec: { ...ok, limits: { maxDowntime: '-1s' } } }, /spec\.limits\.maxDowntime.*should match/],
  ['a maxDowntime without a unit', { spec: { ...ok, limits: { maxDowntime: '300' } } }, /spec\.limits\.maxDowntime.*should match/],
  ['limits as a list', { spec: { ...ok, limits: [] } }, /spec\.limits.*must be of type object/],
  ['source as a string', { spec: { ...ok, source: 'node-1/sim-0' } }, /spec\.source.*must be of type object/],
  ['cancel as a string', { spec: { ...ok, cancel: 'yes' } }, /spec\.cancel.*must be of type boolean/],
  ['an unknown spec field', { spec: { ...ok, sourceNode: 'node-1' } }, /unknown field "spec\.sourceNode"/],
  ['an unknown limits field', { spec: { ...ok, limits: { speed: '1Gi' } } }, /unknown field "spec\.limits\.speed"/],
  ['an unknown top-level field', { spec: ok, extra: true }, /unknown field "extra"/],
  ['the target is the source', { spec: { source: ok.source, target: { node: 'node-1', device: 'sim-0' } } }, /spec\.target must differ from spec\.source/],
  ['the same node with no target device', { spec: { source: ok.source, target: { node: 'node-1' } } }, /spec\.target must differ from spec\.source/],
  ['a bad object name', { metadata: { name: 'Bad_Name' }, spec: ok }, /metadata\.name.*(RFC 1123|lowercase)/],
];

describe('refused by the API server, naming the field, storing nothing', () => {
  it.each(refused)('%s', async (_what, body, field) => {
    const r = await create(body);
    expect(r.code).toBeGreaterThanOrEqual(400);
    expect(r.message).toMatch(field);
    expect(await exists(r.name).catch(() => false)).toBe(false);
  });
});

describe('changes after creation', () => {
  const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);
  const changes: Array<[string, Record<string, unknown>, RegExp]> = [
    ['moving the source', { spec: { source: { node: 'node-2', device: 'sim-1' } } }, /spec is immutable once created, except spec\.cancel/],
    ['changing the target', { spec: { target: { node: 'node-2', device: 'sim-1' } } }, /spec is immutable once created, except spec\.cancel/],
    ['changing the strategy', { spec: { strategy: 'StopCopy' } }, /spec is immutable once created, except spec\.cancel/],
    ['adding limits', { spec: { limits: { bandwidth: '1Mi' } } }, /spec is immutable once created, except spec\.cancel/],
  ];
  it.each(changes)('%s is refused and leaves the object as it was', async (_what, patch, msg) => {
    const name = `immutable-${++n}`;
    // A node without an agent keeps it waiting: the object is live, but no device moves.
    expect((await create({ metadata: { name }, spec: { source: { node: 'node-9', device: 'sim-0' }, target: { node: 'node-2' } } })).code).toBe(0);
    const before = (await kube.getMigration(name))!;
    const err = await kube.custom.patchClusterCustomObject({ ...at, name, body: patch }, merge).then(() => undefined, (e: { code?: number; body?: string }) => e);
    expect(err?.code).toBe(422);
    expect(String(err?.body)).toMatch(msg);
    expect((await kube.getMigration(name))!.spec).toEqual(before.spec);
  });

  it('un-cancelling is refused', async () => {
    const name = `uncancel-${++n}`;
    expect((await create({ metadata: { name }, spec: { source: { node: 'node-9', device: 'sim-0' }, target: { node: 'node-2' }, cancel: true } })).code).toBe(0);
    const err = await kube.custom.patchClusterCustomObject({ ...at, name, body: { spec: { cancel: false } } }, merge).then(() => undefined, (e: { code?: number; body?: string }) => e);
    expect(err?.code).toBe(422);
    expect(String(err?.body)).toMatch(/spec\.cancel cannot be set back to false/);
  });
});

/** Accepted, then failed (or held) by the controller: [what, spec, reason, field named, final?]. */
const judged: Array<[string, Record<string, unknown>, string, RegExp, 'Failed' | 'waits']> = [
  ['a source node that does not exist', { source: { node: 'node-7', device: 'sim-0' }, target: { node: 'node-2' } }, 'NodeNotFound', /^spec\.source\.node: node node-7 does not exist/, 'Failed'],
  ['a target node that does not exist', { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-8' } }, 'NodeNotFound', /^spec\.target\.node: node node-8 does not exist/, 'Failed'],
  ['a source device the node lacks', { source: { node: 'node-1', device: 'sim-7' }, target: { node: 'node-2' } }, 'DeviceNotFound', /^spec\.source\.device: node node-1 has no device sim-7 \(it has: sim-0, sim-1\)/, 'Failed'],
  ['a target device the node lacks', { source: { node: 'node-1', device: 'sim-1' }, target: { node: 'node-2', device: 'gpu-0' } }, 'DeviceNotFound', /^spec\.target\.device: node node-2 has no device gpu-0/, 'Failed'],
  ['a node with no agent', { source: { node: 'node-1', device: 'sim-1' }, target: { node: 'node-9' } }, 'AgentNotReady', /^spec\.target\.node: node node-9 has no DeviceNode/, 'waits'],
];

describe('failed by the controller, naming the field, touching no device', () => {
  it.each(judged)('%s', async (_what, spec, reason, message, final) => {
    const src = env.agents[0]!;
    const before = await Promise.all(['sim-0', 'sim-1'].map((d) => simDigest(src.simDir, d)));
    const r = await create({ spec });
    expect(r.code).toBe(0);
    const m = await until<DeviceMigration>(`${r.name} judged`, async () => {
      const x = await kube.getMigration(r.name);
      const cond = x?.status?.conditions?.find((c) => c.reason === reason);
      return (final === 'Failed' ? x?.status?.phase === 'Failed' : Boolean(cond)) ? x : undefined;
    }, 30_000, 100);
    const why = m.status?.failure ?? m.status?.conditions?.find((c) => c.reason === reason);
    expect(why?.reason).toBe(reason);
    expect(why?.message).toMatch(message);
    if (final === 'waits') expect(m.status?.phase).toBe('Pending');
    expect(m.status?.arcs ?? []).toEqual([]);
    const after = await Promise.all(['sim-0', 'sim-1'].map((d) => simDigest(src.simDir, d)));
    expect(after).toEqual(before);
    for (const d of after) expect(d.state).toBe('RUNNING');
  }, 60_000);

  it('the table is at least 30 rows', () => {
    expect(refused.length + 5 + judged.length).toBeGreaterThanOrEqual(30);
  });
});
