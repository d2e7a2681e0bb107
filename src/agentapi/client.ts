/**
 * A client of one agent's control API over HTTP/2 with mutual TLS: what the controller, the CLI and
 * peer agents use. It talks to the agent of one node only: a peer whose certificate names another
 * identity is refused in the handshake (RelayError PeerIdentityMismatch), before any request.
 * Failures carry the agent's error code and the whole answer (arcs included).
 */
import { connect, type ClientHttp2Session } from 'node:http2';
import { once } from 'node:events';
import type {
  CancelRequest, CommitRequest, DeviceView, FreeRequest, ReceiveRequest, ReleaseRequest, ResetRequest, SendRequest, SessionView, SetStateRequest,
} from './types.js';
import type { ArcResult } from '../vfio/device.js';
import type { Occupancy } from '../api/types.js';
import { clientOptions, type TlsMaterial } from '../relay/h2.js';

export interface ArcsAnswer {
  readonly arcs: ArcResult[];
  readonly state: string;
  readonly replayed?: boolean;
  readonly error?: { readonly code: string; readonly errno?: string; readonly message: string };
  readonly bytes?: number;
  readonly digest?: string;
}

export class AgentCallError extends Error {
  override readonly name = 'AgentCallError';
  constructor(readonly status: number, readonly code: string, message: string, readonly body: unknown) {
    super(message);
  }
}

const REQUEST_TIMEOUT_MS = 30_000;

export class AgentClient {
  private session: ClientHttp2Session | undefined;

  /** `node`: the node whose agent this must be, whatever answers at `endpoint`. */
  constructor(readonly endpoint: string, private readonly tls: TlsMaterial, readonly node: string, private readonly timeoutMs = REQUEST_TIMEOUT_MS) {}

  health = () => this.call<{ ok: boolean }>('GET', '/healthz');
  ready = () => this.call<{ ready: boolean }>('GET', '/readyz');
  devices = () => this.call<{ node: string; devices: DeviceView[] }>('GET', '/v1/devices');
  device = (d: string) => this.call<DeviceView>('GET', `/v1/devices/${enc(d)}`);
  setState = (d: string, r: SetStateRequest) => this.call<ArcsAnswer>('POST', `/v1/devices/${enc(d)}/state`, r);
  reset = (d: string, r: ResetRequest) => this.call<{ state: string }>('POST', `/v1/devices/${enc(d)}/reset`, r);
  release = (d: string, r: ReleaseRequest) => this.call<{ released: boolean } & Partial<ArcsAnswer>>('POST', `/v1/devices/${enc(d)}/release`, r);
  receive = (d: string, r: ReceiveRequest) => this.call<ArcsAnswer>('POST', `/v1/devices/${enc(d)}/receive`, r);
  send = (d: string, r: SendRequest) => this.call<ArcsAnswer>('POST', `/v1/devices/${enc(d)}/send`, r);
  commit = (d: string, r: CommitRequest) => this.call<ArcsAnswer>('POST', `/v1/devices/${enc(d)}/commit`, r);
  /** A DeviceRelease: reset the device and record it free (refused while a migration or a pod has it). */
  free = (d: string, r: FreeRequest) => this.call<{ freed: boolean; state: string; occupancy: Occupancy; previous?: Occupancy; replayed?: boolean }>('POST', `/v1/devices/${enc(d)}/free`, r);
  uncommit = (d: string, r: CommitRequest) => this.call<{ uncommitted: boolean; state?: string }>('POST', `/v1/devices/${enc(d)}/uncommit`, r);
  /** With `waitMs`, the agent answers once its send sessions of `m` ended, or after waitMs. */
  migration = (m: string, waitMs = 0) => this.call<{ sessions: SessionView[] }>('GET', `/v1/migrations/${enc(m)}${waitMs > 0 ? `?wait=${waitMs}` : ''}`);
  cancel = (m: string, r: CancelRequest) => this.call<{ devices: unknown[] }>('POST', `/v1/migrations/${enc(m)}/cancel`, r);

  close(): void {
    this.session?.close();
    this.session = undefined;
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const session = await this.connect();
    const req = session.request({ ':method': method, ':path': path, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) });
    const what = `${this.endpoint} ${method} ${path}`;
    // Every way a request can end must settle it: an answer, an error, a timeout, or a stream that
    // closes without either (its peer died, its session went away). A close() alone emits no error,
    // and waiting for a response that never comes hung a reconcile pass forever.
    // A peer that does not answer in time may be gone without a word (a pod deleted with its network:
    // no RST ever comes), and every later request on its session would wait as long: the session goes
    // too, and the next call connects afresh (to the endpoint the agent publishes now, if it moved).
    req.setTimeout(this.timeoutMs, () => {
      req.destroy(new Error(`${what}: no answer in ${this.timeoutMs} ms`));
      this.drop(session);
    });
    const answered = new Promise<Record<string, string | number>>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      req.once('close', () => reject(new Error(`${what}: the stream closed without an answer (HTTP/2 code ${req.rstCode ?? '?'}); the agent may have restarted`)));
    });
    req.end(body !== undefined ? JSON.stringify(body) : undefined);
    const headers = await answered;
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const status = Number(headers[':status']);
    const text = Buffer.concat(chunks).toString('utf8');
    const parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    if (status >= 200 && status < 300) return parsed as T;
    const err = parsed.error as { code?: string; message?: string } | string | undefined;
    const code = typeof err === 'object' ? err.code ?? 'Error' : String(err ?? 'Error');
    const message = typeof err === 'object' ? err.message ?? text : typeof parsed.message === 'string' ? parsed.message : text;
    throw new AgentCallError(status, code, `${this.endpoint} ${method} ${path}: ${status} ${code}: ${message}`, parsed);
  }

  private async connect(): Promise<ClientHttp2Session> {
    if (this.session && !this.session.closed && !this.session.destroyed) return this.session;
    const s = connect(this.endpoint, clientOptions(this.tls, this.node));
    s.on('error', () => undefined); // reported by the request that fails
    s.setTimeout(this.timeoutMs, () => s.destroy(new Error(`no answer from ${this.endpoint} in ${this.timeoutMs} ms`)));
    await Promise.race([
      once(s, 'connect'),
      once(s, 'error').then(([e]) => { throw e as Error; }),
    ]);
    this.session = s;
    return s;
  }

  private drop(s: ClientHttp2Session): void {
    if (this.session === s) this.session = undefined;
    s.destroy();
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}
