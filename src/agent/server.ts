/**
 * The agent's HTTP/2 server: TLS with client certificates, a small router, JSON in and out, and the
 * guard clauses every request passes (identity, draining, content type, size, schema) before any
 * handler touches a device.
 */
import { createSecureServer, type Http2SecureServer, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { z } from 'zod';
import { serverOptions } from '../relay/h2.js';
import { captureTrailers } from '../relay/receiver.js';
import { cancelRequest, commitRequest, freeRequest, releaseRequest, objectName, receiveRequest, resetRequest, sendRequest, setStateRequest } from '../agentapi/types.js';
import type { AgentContext, Reply } from './context.js';
import { AgentError, badRequest } from './errors.js';
import { AuthError, describeIdentity, identify, type Identity } from './identity.js';
import { cancel, deviceView, migrationView, release, reset, setState } from './ops.js';
import { freeDevice } from './occupancy.js';
import { startSend } from './source.js';
import { acceptStream, commit, prepareReceive, uncommit } from './target.js';

const MAX_BODY = 64 * 1024;

type Who = 'none' | 'controller' | 'cluster';
interface Route {
  readonly method: string;
  readonly path: RegExp;
  readonly who: Who;
  /** Streams its own body (the data path); everything else gets parsed JSON. */
  readonly raw?: boolean;
  handle(ctx: AgentContext, r: Request): Promise<Reply>;
}
interface Request {
  readonly id: Identity | undefined;
  readonly params: string[];
  readonly body: unknown;
  readonly headers: IncomingHttpHeaders;
  readonly stream: ServerHttp2Stream;
  readonly trailers: () => IncomingHttpHeaders | undefined;
}

const json = <S extends z.ZodType>(schema: S, body: unknown): z.output<S> => {
  const r = schema.safeParse(body);
  if (!r.success) throw badRequest(`invalid request: ${z.prettifyError(r.error).replace(/\n/g, '; ')}`);
  return r.data;
};

const routes: Route[] = [
  { method: 'GET', path: /^\/healthz$/, who: 'none', handle: async () => ({ status: 200, body: { ok: true } }) },
  {
    method: 'GET', path: /^\/readyz$/, who: 'none',
    handle: async (ctx) => (ctx.draining ? { status: 503, body: { ready: false, reason: 'draining' } } : { status: 200, body: { ready: true } }),
  },
  {
    method: 'GET', path: /^\/v1\/devices$/, who: 'cluster',
    handle: async (ctx) => ({ status: 200, body: {
      node: ctx.config.node,
      // How busy the node is against its limit: the controller backs off on 429, people see why.
      sessions: { active: ctx.sessions.active().length, max: ctx.config.maxSessions },
      devices: await Promise.all(ctx.devices.list().map((d) => deviceView(ctx, d.name))),
    } }),
  },
  { method: 'GET', path: /^\/v1\/devices\/([^/]+)$/, who: 'cluster', handle: async (ctx, r) => ({ status: 200, body: await deviceView(ctx, r.params[0]!) }) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/state$/, who: 'controller', handle: (ctx, r) => setState(ctx, r.params[0]!, json(setStateRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/reset$/, who: 'controller', handle: (ctx, r) => reset(ctx, r.params[0]!, json(resetRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/release$/, who: 'controller', handle: (ctx, r) => release(ctx, r.params[0]!, json(releaseRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/free$/, who: 'controller', handle: (ctx, r) => freeDevice(ctx, r.params[0]!, json(freeRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/receive$/, who: 'controller', handle: (ctx, r) => prepareReceive(ctx, r.params[0]!, json(receiveRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/send$/, who: 'controller', handle: (ctx, r) => startSend(ctx, r.params[0]!, json(sendRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/commit$/, who: 'controller', handle: (ctx, r) => commit(ctx, r.params[0]!, json(commitRequest, r.body)) },
  { method: 'POST', path: /^\/v1\/devices\/([^/]+)\/uncommit$/, who: 'controller', handle: (ctx, r) => uncommit(ctx, r.params[0]!, json(commitRequest, r.body)) },
  {
    method: 'GET', path: /^\/v1\/migrations\/([^/]+)$/, who: 'cluster',
    handle: async (ctx, r) => ({ status: 200, body: await migrationView(ctx, r.params[0]!, waitOf(r.headers)) }),
  },
  { method: 'POST', path: /^\/v1\/migrations\/([^/]+)\/cancel$/, who: 'controller', handle: (ctx, r) => cancel(ctx, r.params[0]!, json(cancelRequest, r.body)) },
  {
    method: 'PUT', path: /^\/v1\/migrations\/([^/]+)\/stream$/, who: 'cluster', raw: true,
    handle: (ctx, r) => acceptStream(ctx, r.id!, r.params[0]!, r.headers, r.stream, r.trailers),
  },
];

export function createAgentServer(ctx: AgentContext): Http2SecureServer {
  const { timeouts } = ctx.config;
  const options = serverOptions(ctx.tls);
  // A peer that never finishes the TLS handshake, or speaks no HTTP/2 after it, is cut off too.
  const server = createSecureServer({ ...options, handshakeTimeout: timeouts.handshake, unknownProtocolTimeout: timeouts.unauthenticated });
  server.on('secureConnection', (socket: TLSSocket) => limitUnauthenticated(socket, timeouts.unauthenticated));
  server.on('session', (session) => session.setLocalWindowSize(options.settings?.initialWindowSize ?? 65535));
  server.on('stream', (stream, headers) => {
    const trailers = captureTrailers(stream);
    handle(ctx, stream, headers, trailers).catch((e: unknown) => {
      ctx.log.error({ err: e }, 'unexpected failure answering a request');
      respond(stream, { status: 500, body: { error: { code: 'Internal', message: (e as Error).message } } });
    });
  });
  return server;
}

async function handle(ctx: AgentContext, stream: ServerHttp2Stream, headers: IncomingHttpHeaders,
  trailers: () => IncomingHttpHeaders | undefined): Promise<void> {
  const method = String(headers[':method']);
  const path = String(headers[':path']).split('?')[0] ?? '';
  try {
    const { route, params } = match(method, path);
    const id = authorize(route.who, stream);
    if (ctx.draining && method !== 'GET' && route.who !== 'none') {
      throw new AgentError(503, 'Draining', `the agent of node ${ctx.config.node} is shutting down; retry against its replacement`);
    }
    const body = route.raw ? undefined : await readJson(stream, headers, method, ctx.config.timeouts.requestBody);
    const reply = await route.handle(ctx, { id, params, body, headers, stream, trailers });
    respond(stream, reply);
  } catch (e) {
    respond(stream, errorReply(e));
  }
}

/**
 * A connection that shows no certificate of our CA may reach only the health endpoints (every other
 * route answers 401), and only for `ms`: then it is closed, whatever it is doing, HTTP/2 or not.
 * Peers that never authenticate cannot hold connections open (a TLS handshake itself is bounded by
 * handshakeTimeout).
 */
function limitUnauthenticated(socket: TLSSocket, ms: number): void {
  if (socket.authorized) return;
  const timer = setTimeout(() => socket.destroy(), ms);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** The long poll's `?wait=<ms>`: a whole number of milliseconds up to MAX_WAIT_MS; no other query. */
const MAX_WAIT_MS = 2000;
function waitOf(headers: IncomingHttpHeaders): number {
  const query = new URLSearchParams(String(headers[':path']).split('?')[1] ?? '');
  for (const key of query.keys()) {
    if (key !== 'wait') throw badRequest(`query parameter "${key}" is unknown; the only one is wait (milliseconds, 0 to ${MAX_WAIT_MS})`);
  }
  const raw = query.get('wait');
  if (raw === null) return 0;
  if (!/^\d{1,4}$/.test(raw) || Number(raw) > MAX_WAIT_MS) throw badRequest(`query parameter wait "${raw}": a whole number of milliseconds from 0 to ${MAX_WAIT_MS}`);
  return Number(raw);
}

function match(method: string, path: string): { route: Route; params: string[] } {
  let pathMatched = false;
  for (const route of routes) {
    const m = route.path.exec(path);
    if (!m) continue;
    pathMatched = true;
    if (route.method !== method) continue;
    const params = m.slice(1).map(decodeParam);
    return { route, params };
  }
  if (pathMatched) throw new AgentError(405, 'MethodNotAllowed', `${method} is not allowed on ${path}`);
  throw new AgentError(404, 'NotFound', `no such endpoint: ${method} ${path}`);
}

/** Path segments are object names: anything else (../, %2F, upper case) is refused before it is used. */
function decodeParam(raw: string): string {
  let value: string;
  try {
    value = decodeURIComponent(raw);
  } catch {
    throw badRequest(`path segment "${raw}" is not valid percent-encoding`);
  }
  const r = objectName.safeParse(value);
  if (!r.success) throw badRequest(`name "${value}" in the path ${r.error.issues[0]?.message ?? 'is invalid'}`);
  return value;
}

function authorize(who: Who, stream: ServerHttp2Stream): Identity | undefined {
  if (who === 'none') return undefined;
  const id = identify(stream.session?.socket as TLSSocket);
  if (who === 'controller' && id.kind !== 'controller') {
    throw new AuthError(403, `${describeIdentity(id)} may not do this; only the controller drives devices`);
  }
  return id;
}

/** JSON, in UTF-8 (RFC 8259): `application/json`, with at most a charset that says so. */
const JSON_TYPE = /^application\/json[ \t]*(;[ \t]*charset[ \t]*=[ \t]*("utf-8"|utf-8)[ \t]*)?$/i;

async function readJson(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, method: string, deadlineMs: number): Promise<unknown> {
  if (method === 'GET') return undefined;
  const type = String(headers['content-type'] ?? '');
  if (!JSON_TYPE.test(type)) {
    throw new AgentError(415, 'UnsupportedMediaType', `content-type must be application/json (optionally with "; charset=utf-8"), not "${type || 'none'}"`);
  }
  const declared = Number(headers['content-length'] ?? 0);
  if (declared > MAX_BODY) throw new AgentError(413, 'PayloadTooLarge', `request body of ${declared} bytes exceeds ${MAX_BODY}`);
  const chunks = await readLimited(stream, MAX_BODY, deadlineMs);
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
  } catch (e) {
    throw badRequest(`request body is not JSON: ${(e as Error).message}`);
  }
}

/**
 * Reads a body of at most `limit` bytes, all of it within `deadlineMs`: a body that stops mid-way
 * gets a 408 and its stream is closed. Not with for-await: leaving that loop early destroys the
 * stream, and the 413 or 408 could then never be sent.
 */
function readLimited(stream: ServerHttp2Stream, limit: number, deadlineMs: number): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const refuse = (e: Error) => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.pause();
      reject(e);
    };
    const onData = (c: Buffer) => {
      size += c.length;
      if (size <= limit) return void chunks.push(c);
      refuse(new AgentError(413, 'PayloadTooLarge', `request body exceeds ${limit} bytes`));
    };
    const timer = setTimeout(() => refuse(new AgentError(408, 'RequestTimeout',
      `the request body did not arrive in ${deadlineMs} ms (${size} bytes came); send it whole (timeouts.requestBody)`)), deadlineMs);
    stream.on('data', onData);
    stream.once('end', () => { clearTimeout(timer); resolve(chunks); });
    stream.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

function errorReply(e: unknown): Reply {
  if (e instanceof AgentError) return { status: e.status, body: { error: { code: e.code, message: e.message, ...e.extra } } };
  if (e instanceof AuthError) return { status: e.status, body: { error: { code: e.status === 401 ? 'Unauthenticated' : 'Forbidden', message: e.message } } };
  throw e;
}

function respond(stream: ServerHttp2Stream, reply: Reply): void {
  if (stream.destroyed || stream.closed) return;
  if (stream.headersSent) {
    stream.close();
    return;
  }
  stream.respond({ ':status': reply.status, 'content-type': 'application/json' });
  // A request body we will not read (a refused stream) is cut off once the answer is out (RFC 9113 8.1).
  stream.end(JSON.stringify(reply.body), () => { if (!stream.readableEnded) stream.close(); });
}
