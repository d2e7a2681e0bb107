/**
 * The controller's agent client settles every request: an answer, an error, or a stream that ends
 * without an answer (its agent died mid-request). A request that waited forever once hung a
 * reconcile pass, and with it a migration, after a SIGKILLed agent.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { constants, createSecureServer, type Http2SecureServer } from 'node:http2';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import { AgentClient } from '../../src/agentapi/client.js';
import { RelayError } from '../../src/relay/errors.js';
import { serverOptions } from '../../src/relay/h2.js';
import { makePki, type Pki } from '../helpers/agents.js';

let dir: string;
let pki: Pki;
let server: Http2SecureServer;
let endpoint: string;
let behave: 'reset' | 'die' | 'silent' = 'reset';
let streams = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-client-'));
  pki = await makePki(dir);
  server = createSecureServer(serverOptions(await pki.agent('node-a')));
  const sockets = new Set<TLSSocket>();
  server.on('secureConnection', (s: TLSSocket) => { sockets.add(s); s.on('error', () => undefined); });
  server.on('session', (s) => s.on('error', () => undefined));
  server.on('stream', (stream) => {
    streams++;
    stream.on('error', () => undefined);
    if (behave === 'reset') stream.close(constants.NGHTTP2_NO_ERROR); // ends the stream, no error, no answer
    else if (behave === 'die') for (const s of sockets) s.destroy(); // what a SIGKILLed agent's kernel does
    // silent: never answers
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  endpoint = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((r) => server.close(() => r()));
  await rm(dir, { recursive: true, force: true });
});

it.each(['reset', 'die'] as const)('a stream that ends without an answer (%s) fails the call at once', async (how) => {
  behave = how;
  const c = new AgentClient(endpoint, pki.controller, 'node-a', 20_000);
  const started = Date.now();
  await expect(c.devices()).rejects.toThrow(/closed without an answer|socket|ECONNRESET|GOAWAY|session/i);
  expect(Date.now() - started).toBeLessThan(5000);
  c.close();
});

it('an agent that never answers fails the call after its timeout', async () => {
  behave = 'silent';
  const c = new AgentClient(endpoint, pki.controller, 'node-a', 500);
  await expect(c.devices()).rejects.toThrow(/no answer in 500 ms/);
  c.close();
});

it('a client of one node\'s agent refuses a peer whose certificate names another, before any request', async () => {
  const before = streams;
  const c = new AgentClient(endpoint, pki.controller, 'node-b', 5000);
  const e = await c.devices().then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(RelayError);
  expect(e).toMatchObject({ code: 'PeerIdentityMismatch' });
  expect((e as Error).message).toMatch(/certificate for "agent:node-a", not "agent:node-b"/);
  expect(streams).toBe(before);
  c.close();
  // The same peer, meant as the node it is, answers.
  behave = 'silent';
  const right = new AgentClient(endpoint, pki.controller, 'node-a', 500);
  await expect(right.devices()).rejects.toThrow(/no answer in 500 ms/);
  expect(streams).toBe(before + 1);
  right.close();
});
