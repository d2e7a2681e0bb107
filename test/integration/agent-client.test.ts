/**
 * The controller's agent client settles every request: an answer, an error, or a stream that ends
 * without an answer (its agent died mid-request). A request that waited forever once hung a
 * reconcile pass, and with it a migration, after a SIGKILLed agent.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { constants, createSecureServer, type Http2SecureServer } from 'node:http2';
import { createServer, type AddressInfo, type Socket } from 'node:net';
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
let connections = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-client-'));
  pki = await makePki(dir);
  server = createSecureServer(serverOptions(await pki.agent('node-a')));
  const sockets = new Set<TLSSocket>();
  server.on('secureConnection', (s: TLSSocket) => { connections++; sockets.add(s); s.on('error', () => undefined); });
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

it('after a call got no answer in time, the next one connects afresh: a silent peer\'s session is not reused', async () => {
  behave = 'silent';
  const c = new AgentClient(endpoint, pki.controller, 'node-a', 500);
  const before = connections;
  await expect(c.devices()).rejects.toThrow(/no answer in 500 ms/);
  await expect(c.devices()).rejects.toThrow(/no answer in 500 ms/);
  // Two calls, two connections: the second did not wait on the session the first found dead.
  expect(connections - before).toBe(2);
  c.close();
});

it('an address that accepts but never completes a handshake fails the call after its timeout', async () => {
  const sockets: Socket[] = [];
  const mute = createServer((sock) => { sockets.push(sock); sock.on('error', () => undefined); }); // TCP only: no TLS ever
  await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
  const c = new AgentClient(`https://127.0.0.1:${(mute.address() as AddressInfo).port}`, pki.controller, 'node-a', 500);
  const started = Date.now();
  await expect(c.devices()).rejects.toThrow(/no answer from .* in 500 ms/);
  expect(Date.now() - started).toBeLessThan(5000);
  c.close();
  for (const sock of sockets) sock.destroy();
  await new Promise<void>((r) => mute.close(() => r()));
});

it('after its agent restarted at the same address, the next call reaches the new one', async () => {
  const agentTls = serverOptions(await pki.agent('node-a'));
  const start = (port: number) => new Promise<Http2SecureServer>((resolve) => {
    const srv = createSecureServer(agentTls);
    srv.on('session', (ss) => ss.on('error', () => undefined));
    srv.on('stream', (stream) => { stream.on('error', () => undefined); stream.respond({ ':status': 200, 'content-type': 'application/json' }); stream.end('{"devices":[]}'); });
    srv.listen(port, '127.0.0.1', () => resolve(srv));
  });
  const first = await start(0);
  const port = (first.address() as AddressInfo).port;
  const sockets = new Set<Socket>();
  first.on('secureConnection', (sock: Socket) => sockets.add(sock));
  const c = new AgentClient(`https://127.0.0.1:${port}`, pki.controller, 'node-a', 2000);
  await c.devices();
  // The agent dies (its sockets reset, as the kernel does for a killed process) and another starts at the same address.
  for (const sock of sockets) sock.destroy();
  await new Promise<void>((r) => first.close(() => r()));
  const second = await start(port);
  const started = Date.now();
  let answer: unknown;
  for (;;) {
    answer = await c.devices().catch((e: Error) => e);
    if (!(answer instanceof Error) || Date.now() - started > 10_000) break;
  }
  expect(answer).toEqual({ devices: [] });
  expect(Date.now() - started).toBeLessThan(3000);
  c.close();
  await new Promise<void>((r) => second.close(() => r()));
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
