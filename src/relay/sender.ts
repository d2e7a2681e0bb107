/**
 * The source half of the relay: reads the device's data_fd and writes it to an HTTP/2 stream to the
 * target agent, with backpressure end to end (a full flow-control window stops our reads), a
 * bandwidth limit, and the byte count and digest sent as trailers after the last byte.
 */
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { settleWithin } from '../async.js';
import { DeviceError, type SaveStream } from '../vfio/device.js';
import { Wire, createStreamDigest, type DigestAlgorithm } from './digest.js';
import { RelayError, type RelayCode } from './errors.js';
import { CHUNK, clientOptions, type TlsMaterial } from './h2.js';
import { Throttle } from './throttle.js';

const DEFAULT_STALL_MS = 30_000;

export interface SendOptions {
  /** The target agent, e.g. https://127.0.0.2:9443 */
  readonly endpoint: string;
  /** The target's node: the certificate at `endpoint` must name its agent. */
  readonly node: string;
  readonly tls: TlsMaterial;
  readonly migration: string;
  /** The device on the target that receives. */
  readonly device: string;
  readonly ticket: string;
  readonly algorithm: DigestAlgorithm;
  readonly bandwidth?: number;
  readonly signal: AbortSignal;
  /**
   * A stream that moves nothing for this long fails with StreamStalled (default 30 s): the target
   * takes nothing, or gives no verdict this long after the last byte left.
   */
  readonly stallMs?: number;
  /** How long to wait after PRE_COPY's ENOMSG before reading again. */
  readonly precopyPollMs?: number;
  onProgress?(bytes: number): void;
}

export interface TargetVerdict {
  readonly verified: boolean;
  readonly bytes: number;
  readonly digest: string;
  readonly error?: string;
}

export interface SendResult {
  readonly bytes: number;
  readonly digest: string;
  readonly target: TargetVerdict;
}

/**
 * Where a failed send stood: whether every byte had left (then the target may have the whole state
 * and only the controller may decide what happens next).
 */
export class SendFailure extends RelayError {
  constructor(cause: RelayError, readonly allSent: boolean, readonly bytes: number) {
    super(cause.code, cause.message, cause.status);
  }
}

/**
 * Streams `save` to the target. `link`, when given, is a session already connected (connectTarget):
 * the source agent connects before the device stops, so the handshake is no part of the downtime.
 */
export async function sendStream(save: SaveStream, opts: SendOptions, link?: ClientHttp2Session): Promise<SendResult> {
  const session = link ?? await connectTarget(opts.endpoint, opts.node, opts.tls, opts.signal);
  const state = { bytes: 0, allSent: false };
  let response: Promise<TargetVerdict> | undefined;
  try {
    const req = session.request({
      ':method': 'PUT',
      ':path': `/v1/migrations/${encodeURIComponent(opts.migration)}/stream`,
      'content-type': 'application/octet-stream',
      [Wire.ticket]: opts.ticket,
      [Wire.device]: opts.device,
      [Wire.algorithm]: opts.algorithm,
    }, { waitForTrailers: true, signal: opts.signal });
    response = readResponse(req);
    response.catch(() => undefined); // observed below; a failed write must not leave it unhandled
    const digest = await pump(save, req, opts, state);
    state.allSent = true;
    const target = await verdictWithin(response, req, opts);
    return { bytes: state.bytes, digest, target };
  } catch (e) {
    // A target that refuses the stream half-way (its device rejected the data) answers why and
    // closes it, and our next write then fails on a closed stream: its answer says more.
    const refusal = response && !opts.signal.aborted ? await answerWithin(response, REFUSAL_WAIT_MS) : undefined;
    throw new SendFailure(asRelayError(refusal ?? e, opts), state.allSent, state.bytes);
  } finally {
    session.close();
  }
}

async function pump(save: SaveStream, req: ClientHttp2Stream, opts: SendOptions, state: { bytes: number }): Promise<string> {
  const digest = createStreamDigest(opts.algorithm);
  const throttle = new Throttle(opts.bandwidth);
  // One device read stays in flight while the previous chunk goes out: the data_fd read and the
  // network write overlap instead of taking turns.
  const pool = new BufferPool(POOL_SIZE, CHUNK);
  const readChunk = async (): Promise<{ buf: Buffer; n: number | 'ENOMSG' }> => {
    const buf = await pool.take();
    try {
      const n = await readDevice(save, buf);
      if (n === 'ENOMSG' || n === 0) pool.give(buf);
      return { buf, n };
    } catch (e) {
      pool.give(buf);
      throw e;
    }
  };
  let next = readChunk();
  try {
    return await pumpLoop();
  } finally {
    // Never leave a read of the data_fd running once we are done with it (the fd is closed next).
    await next.catch(() => undefined);
  }

  async function pumpLoop(): Promise<string> {
    for (;;) {
      opts.signal.throwIfAborted();
      const { buf, n } = await next;
      if (n === 'ENOMSG') {
        // PRE_COPY's temporary end of data: the device may dirty more, or the controller may move it to
        // STOP_COPY; either way the same data_fd goes on.
        await sleep(opts.precopyPollMs ?? 5, undefined, { signal: opts.signal });
        next = readChunk();
        continue;
      }
      if (n === 0) break;
      next = readChunk();
      next.catch(() => undefined); // awaited on the next turn; a failure there is reported then
      const chunk = buf.subarray(0, n);
      digest.update(chunk);
      for (let at = 0; at < n; at += throttle.slice) {
        const piece = chunk.subarray(at, at + throttle.slice);
        await throttle.take(piece.length, opts.signal);
        // The link may have died while we read or waited for the bandwidth budget: a closed stream
        // emits its 'close' once, before anyone listens for it here.
        if (req.closed || req.destroyed) throw closedEarly(req);
        // The buffer goes back to the pool once HTTP/2 has taken its last piece.
        const last = at + piece.length >= n;
        if (!req.write(piece, last ? () => pool.give(buf) : undefined)) await drained(req, opts);
        state.bytes += piece.length;
        opts.onProgress?.(state.bytes);
      }
    }
    const value = digest.value();
    req.once('wantTrailers', () => req.sendTrailers({ [Wire.bytes]: String(state.bytes), [Wire.digest]: value }));
    req.end();
    return value;
  }
}

/** How long a failed send waits for the target's answer saying why, before it reports the failure itself. */
const REFUSAL_WAIT_MS = 1000;

/** The target's refusal (a RelayError other than the stream breaking) if it arrives within `ms`. */
async function answerWithin(response: Promise<TargetVerdict>, ms: number): Promise<RelayError | undefined> {
  const answer = await settleWithin(response, ms);
  const why: unknown = answer?.status === 'rejected' ? answer.reason : undefined;
  return why instanceof RelayError && why.code !== 'StreamAborted' ? why : undefined;
}

/** Chunks in flight: enough to keep a read and a few writes going, few enough to bound memory. */
const POOL_SIZE = 6;

/** Fixed read buffers, so the source's memory is a few chunks whatever the state size. */
class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiting: Array<(b: Buffer) => void> = [];

  constructor(count: number, size: number) {
    for (let i = 0; i < count; i++) this.free.push(Buffer.allocUnsafe(size));
  }

  take(): Promise<Buffer> {
    const b = this.free.pop();
    return b ? Promise.resolve(b) : new Promise((resolve) => this.waiting.push(resolve));
  }

  give(b: Buffer): void {
    const w = this.waiting.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}

/**
 * Waits for room in the stream. A peer that dies closes the stream without an 'error', and 'drain'
 * then never comes; a peer that stops reading (a half-open connection) leaves it pending forever. So
 * a close rejects, and so does no room for `stallMs`.
 */
function drained(req: ClientHttp2Stream, opts: SendOptions): Promise<void> {
  if (req.closed || req.destroyed) return Promise.reject(closedEarly(req));
  return new Promise((resolve, reject) => {
    const stallMs = opts.stallMs ?? DEFAULT_STALL_MS;
    const done = (e?: Error) => {
      clearTimeout(timer);
      req.off('drain', onDrain).off('close', onClose).off('error', onError);
      opts.signal.removeEventListener('abort', onAbort);
      if (e) reject(e);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(closedEarly(req));
    const onError = (e: Error) => done(e);
    const onAbort = () => done(opts.signal.reason instanceof Error ? opts.signal.reason : new Error(String(opts.signal.reason)));
    const timer = setTimeout(() => done(new RelayError('StreamStalled', `the target took nothing for ${stallMs} ms (stalled, or the connection is half-open)`)), stallMs);
    req.once('drain', onDrain).once('close', onClose).once('error', onError);
    opts.signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The target's verdict, which comes once it has written what it holds to its device (at most a
 * window and its write buffers). One that does not come within `stallMs` of the last byte is a
 * stall: the stream is cancelled, and its outcome is the controller's to settle (every byte left).
 */
async function verdictWithin(response: Promise<TargetVerdict>, req: ClientHttp2Stream, opts: SendOptions): Promise<TargetVerdict> {
  const stallMs = opts.stallMs ?? DEFAULT_STALL_MS;
  const answer = await settleWithin(response, stallMs);
  if (answer?.status === 'fulfilled') return answer.value;
  if (answer?.status === 'rejected') throw answer.reason;
  req.close(constants.NGHTTP2_CANCEL);
  throw new RelayError('StreamStalled', `the target gave no verdict within ${stallMs} ms of the last byte (stalled, or the connection is half-open)`);
}

function closedEarly(req: ClientHttp2Stream): RelayError {
  return new RelayError('StreamAborted', `the stream to the target closed (HTTP/2 code ${req.rstCode ?? '?'}) before it took everything: the link or the target went away`);
}

async function readDevice(save: SaveStream, buf: Buffer): Promise<number | 'ENOMSG'> {
  try {
    return await save.read(buf);
  } catch (e) {
    if (e instanceof DeviceError) throw new RelayError('DeviceReadFailed', `reading the source data_fd failed: ${e.message} (${e.errno})`);
    throw e;
  }
}

async function readResponse(req: ClientHttp2Stream): Promise<TargetVerdict> {
  // A target that dies after the last byte closes the stream without an answer: that rejects too.
  const closed = new Promise<never>((_, reject) => req.once('close', () => reject(new RelayError('StreamAborted', 'the target closed the stream without an answer'))));
  closed.catch(() => undefined);
  const [headers] = (await Promise.race([once(req, 'response'), closed])) as [Record<string, string | number>];
  const status = Number(headers[':status']);
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  // Stream verdicts carry { error: code, message }; the server's refusals { error: { code, message } }.
  let body: Omit<Partial<TargetVerdict>, 'error'> & { error?: string | { code?: string; message?: string }; message?: string };
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    throw new RelayError('PeerRefused', `the target answered ${status} with a body that is not JSON: ${text.slice(0, 200)}`, status);
  }
  if (status === 200 && body.verified) return body as unknown as TargetVerdict;
  const said = typeof body.error === 'object' ? body.error.code : body.error;
  const code = PASSED_ON.has(said ?? '') ? said as RelayCode : status === 422 ? 'StreamMismatch' : 'PeerRefused';
  const why = typeof body.error === 'object' ? `${body.error.code ?? ''}: ${body.error.message ?? ''}` : body.message ?? body.error ?? text;
  throw new RelayError(code, `the target refused the stream (${status}): ${why}`, status);
}

/** Refusals of the target's that keep their own code: the controller records them as the reason. */
const PASSED_ON: ReadonlySet<string> = new Set<RelayCode>(['StreamMismatch', 'StreamStalled', 'DigestRefused']);

/**
 * An HTTP/2 session to the agent of `node`, connected (TLS done, its identity checked), with the
 * bulk window. A peer that is not that agent is refused before anything is sent (PeerIdentityMismatch).
 */
export async function connectTarget(endpoint: string, node: string, tls: TlsMaterial, signal: AbortSignal): Promise<ClientHttp2Session> {
  const options = clientOptions(tls, node);
  const session = connect(endpoint, options);
  session.on('error', () => undefined); // surfaced through the request that fails
  try {
    await once(session, 'connect', { signal });
  } catch (e) {
    session.destroy();
    if (e instanceof RelayError) throw e;
    const why = signal.aborted ? `no connection (${String(signal.reason)})` : (e as Error).message;
    throw new RelayError('PeerUnreachable', `cannot reach the target agent at ${endpoint}: ${why}`);
  }
  session.setLocalWindowSize(options.settings?.initialWindowSize ?? 65535);
  return session;
}

function asRelayError(e: unknown, opts: SendOptions): RelayError {
  if (e instanceof RelayError) return e;
  if (opts.signal.aborted) return new RelayError('Cancelled', `the send was cancelled: ${String(opts.signal.reason)}`);
  const err = e as NodeJS.ErrnoException;
  if (err.code === 'ERR_HTTP2_STREAM_ERROR' || err.code === 'ERR_HTTP2_SESSION_ERROR' || err.code === 'ECONNRESET') {
    return new RelayError('StreamAborted', `the stream to ${opts.endpoint} broke: ${err.message}`);
  }
  return new RelayError('PeerUnreachable', `sending to ${opts.endpoint} failed: ${err.message}`);
}

export const NGHTTP2_CANCEL = constants.NGHTTP2_CANCEL;
