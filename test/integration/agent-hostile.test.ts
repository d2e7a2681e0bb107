/**
 * Hostile requests to the agent API, over real HTTP/2 with TLS: each is refused with its status, and
 * nothing is written — every file under the agent's state and simulated-device directories hashes the
 * same before and after, and the devices are RUNNING with their digests unchanged.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { connect } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import type { Agent } from '../../src/agent/agent.js';
import { clientOptions } from '../../src/relay/h2.js';
import { agentConfig, makePki, startAgent, type Pki } from '../helpers/agents.js';

let dir: string;
let pki: Pki;
let agent: Agent;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-hostile-'));
  pki = await makePki(dir);
  agent = await startAgent(await agentConfig(dir, pki, 'node-a', '127.0.0.2', [{ name: 'sim-0', stateSize: '256Ki' }, { name: 'sim-1', stateSize: '256Ki' }]));
});

afterAll(async () => {
  await agent.stop();
  await rm(dir, { recursive: true, force: true });
});

/** Every file under the agent's directories, with a hash of its bytes. */
async function snapshot(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out[p.slice(dir.length)] = createHash('sha256').update(await readFile(p)).digest('hex');
    }
  };
  await walk(join(dir, 'node-a'));
  return out;
}

type As = 'controller' | 'agent' | 'rogue' | 'none';
async function material(as: As) {
  if (as === 'controller') return pki.controller;
  if (as === 'agent') return pki.agent('node-x');
  if (as === 'rogue') return pki.rogue;
  return { ca: pki.controller.ca };
}

async function send(as: As, method: string, path: string, body?: string | Buffer, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  const s = connect(agent.endpoint, clientOptions(await material(as) as Parameters<typeof clientOptions>[0], 'node-a'));
  s.on('error', () => undefined);
  try {
    const req = s.request({ ':method': method, ':path': path, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers });
    req.on('error', () => undefined);
    req.end(body);
    const [h] = (await once(req, 'response')) as [Record<string, string>];
    let text = '';
    for await (const c of req) text += String(c);
    return { status: Number(h[':status']), text };
  } finally {
    s.close();
  }
}

const body = (o: unknown) => JSON.stringify(o);
const ok = { migration: 'm', op: 'a', state: 'STOP' };
const ticket = 'A'.repeat(43);
const rows: Array<[string, As, string, string, string | Buffer | undefined, Record<string, string>, number, RegExp]> = [
  ['no client certificate', 'none', 'POST', '/v1/devices/sim-0/state', body(ok), {}, 401, /no client certificate/],
  ['a certificate from another CA', 'rogue', 'POST', '/v1/devices/sim-0/state', body(ok), {}, 401, /./],
  ['an agent driving a device', 'agent', 'POST', '/v1/devices/sim-0/state', body(ok), {}, 403, /controller/],
  ['an agent resetting a device', 'agent', 'POST', '/v1/devices/sim-0/reset', body({ migration: 'm', op: 'a' }), {}, 403, /controller/],
  ['an agent cancelling a migration', 'agent', 'POST', '/v1/migrations/m/cancel', body({ op: 'a' }), {}, 403, /controller/],
  ['the controller pushing a stream', 'controller', 'PUT', '/v1/migrations/m/stream', Buffer.alloc(4096, 7), { 'devmig-ticket': ticket, 'devmig-device': 'sim-0', 'content-type': 'application/octet-stream' }, 403, /only a source node's agent may send a stream, not the controller/],
  ['a stream nobody prepared', 'agent', 'PUT', '/v1/migrations/m/stream', Buffer.alloc(4096, 7), { 'devmig-ticket': ticket, 'devmig-device': 'sim-0', 'content-type': 'application/octet-stream' }, 403, /no receive session/],
  ['an unknown path', 'controller', 'GET', '/v1/secrets', undefined, {}, 404, /./],
  ['an unknown method', 'controller', 'DELETE', '/v1/devices/sim-0', undefined, {}, 405, /./],
  ['a wrong content type', 'controller', 'POST', '/v1/devices/sim-0/state', body(ok), { 'content-type': 'text/plain' }, 415, /application\/json/],
  ['a JSON patch, which is not JSON', 'controller', 'POST', '/v1/devices/sim-0/state', body(ok), { 'content-type': 'application/json-patch+json' }, 415, /application\/json/],
  ['JSON in another charset', 'controller', 'POST', '/v1/devices/sim-0/state', body(ok), { 'content-type': 'application/json; charset=latin1' }, 415, /charset=utf-8/],
  ['a media type parameter beyond the charset', 'controller', 'POST', '/v1/devices/sim-0/state', body(ok), { 'content-type': 'application/json; charset=utf-8; x=1' }, 415, /application\/json/],
  ['JSON with its charset reaches the handler (which finds no such device)', 'controller', 'POST', '/v1/devices/sim-9/state', body(ok), { 'content-type': 'application/json; charset=UTF-8' }, 404, /no device/],
  ['an oversized body', 'controller', 'POST', '/v1/devices/sim-0/state', Buffer.alloc(1 << 20, 32), {}, 413, /./],
  ['not JSON', 'controller', 'POST', '/v1/devices/sim-0/state', '{"migration":', {}, 400, /not JSON/],
  ['JSON that is not an object', 'controller', 'POST', '/v1/devices/sim-0/state', '[1,2,3]', {}, 400, /invalid request/],
  ['an unknown field', 'controller', 'POST', '/v1/devices/sim-0/state', body({ ...ok, force: true }), {}, 400, /force/],
  ['a prototype-polluting field', 'controller', 'POST', '/v1/devices/sim-0/state', '{"migration":"m","op":"a","state":"STOP","__proto__":{"admin":true}}', {}, 400, /__proto__|invalid request/],
  ['an unknown state', 'controller', 'POST', '/v1/devices/sim-0/state', body({ ...ok, state: 'PAUSED' }), {}, 400, /state/],
  ['path traversal in a device', 'controller', 'POST', '/v1/devices/..%2F..%2Fetc%2Fpasswd/state', body(ok), {}, 400, /lowercase DNS name/],
  ['a dot-dot device', 'controller', 'POST', '/v1/devices/../state', body(ok), {}, 400, /lowercase DNS name/],
  ['an encoded NUL in a device', 'controller', 'POST', '/v1/devices/sim-0%00/state', body(ok), {}, 400, /lowercase DNS name/],
  ['a device name of 300 characters', 'controller', 'POST', `/v1/devices/${'d'.repeat(300)}/state`, body(ok), {}, 400, /./],
  ['traversal in a migration name', 'controller', 'POST', '/v1/migrations/..%2Fjournal/cancel', body({ op: 'a' }), {}, 400, /lowercase DNS name/],
  ['traversal in the body\'s migration', 'controller', 'POST', '/v1/devices/sim-0/state', body({ ...ok, migration: '../../x' }), {}, 400, /migration/],
  ['an op id of 10 kB', 'controller', 'POST', '/v1/devices/sim-0/state', body({ ...ok, op: 'o'.repeat(10_000) }), {}, 400, /op/],
  ['a ticket that is not one', 'controller', 'POST', '/v1/devices/sim-0/receive', body({ migration: 'm', op: 'a', ticket: 'short', sourceNode: 'node-b' }), {}, 400, /ticket/],
  ['a device that does not exist', 'controller', 'POST', '/v1/devices/sim-9/state', body(ok), {}, 404, /no device .*sim-9.* on node node-a/],
];

it.each(rows)('%s is refused and writes nothing', async (_what, as, method, path, payload, headers, status, why) => {
  const before = await snapshot();
  const r = await send(as, method, path, payload, headers);
  expect(r.status).toBe(status);
  expect(r.text).toMatch(why);
  expect(await snapshot()).toEqual(before);
  const view = JSON.parse((await send('controller', 'GET', '/v1/devices')).text) as { devices: Array<{ name: string; state: string; migration?: string }> };
  for (const d of view.devices) expect(d).toMatchObject({ state: 'RUNNING' });
  for (const d of view.devices) expect(d.migration).toBeUndefined();
});

it('fuzz: arbitrary JSON to every control endpoint is answered 4xx (never 5xx), and writes nothing', async () => {
  const seed = Number(process.env.DEVMIG_FUZZ_SEED ?? 20261125);
  const before = await snapshot();
  const paths = ['/v1/devices/sim-0/state', '/v1/devices/sim-0/reset', '/v1/devices/sim-0/release', '/v1/devices/sim-1/receive',
    '/v1/devices/sim-1/send', '/v1/devices/sim-0/commit', '/v1/migrations/m/cancel'];
  // Arbitrary JSON, and requests that are almost right: one field replaced by arbitrary JSON.
  const almost = fc.tuple(fc.constantFrom('migration', 'op', 'state', 'ticket', 'sourceNode', 'target', 'reason', 'x'), fc.jsonValue())
    .map(([k, v]) => ({ migration: 'm', op: 'a', [k]: v }));
  await fc.assert(fc.asyncProperty(fc.constantFrom(...paths), fc.oneof(fc.jsonValue(), almost), async (path, input) => {
    const r = await send('agent', 'POST', path, JSON.stringify(input));
    expect(r.status).toBe(403); // an agent may drive nothing, whatever it sends
    const c = await send('controller', 'POST', path.replace('sim-0', 'sim-9'), JSON.stringify(input));
    expect(c.status).toBeGreaterThanOrEqual(400);
    expect(c.status).toBeLessThan(500);
  }), { seed, numRuns: Number(process.env.DEVMIG_FUZZ_RUNS ?? 150) });
  expect(await snapshot()).toEqual(before);
}, 120_000);

it('the agent still serves after all of it', async () => {
  expect((await send('none', 'GET', '/healthz')).status).toBe(200);
  expect(rows.length).toBeGreaterThanOrEqual(20);
});
