/**
 * The target half of the relay: writes an HTTP/2 stream into the device's RESUMING data_fd. Each
 * write is awaited before the next chunk is taken, so a slow device holds back the flow-control
 * window and with it the source's reads. The trailers' count and digest must match what arrived.
 */
import type { IncomingHttpHeaders, ServerHttp2Stream } from 'node:http2';
import { DeviceError, type ResumeStream } from '../vfio/device.js';
import { Wire, createStreamDigest, type DigestAlgorithm } from './digest.js';
import { RelayError } from './errors.js';

export interface Received {
  readonly bytes: number;
  readonly digest: string;
}

/**
 * Starts listening for the stream's trailers. Call it as soon as the stream arrives: node:http2 emits
 * 'trailers' when they arrive, and a short stream can be complete before the first await returns.
 */
export function captureTrailers(stream: ServerHttp2Stream): () => IncomingHttpHeaders | undefined {
  let trailers: IncomingHttpHeaders | undefined;
  stream.once('trailers', (t: IncomingHttpHeaders) => { trailers = t; });
  return () => trailers;
}

export interface ReceiveOptions {
  readonly algorithm: DigestAlgorithm;
  readonly signal: AbortSignal;
  readonly trailers: () => IncomingHttpHeaders | undefined;
  /** A source that sends nothing for this long, while we wait for it, fails the stream: StreamStalled. */
  readonly idleMs: number;
  onProgress?(bytes: number): void;
}

export async function receiveStream(stream: ServerHttp2Stream, resume: ResumeStream, opts: ReceiveOptions): Promise<Received> {
  const digest = createStreamDigest(opts.algorithm);
  const got = { bytes: 0 };
  let written = 0;
  try {
    await consume(stream, opts, got, (b) => digest.update(b), async (b) => {
      await resume.write(b);
      written += b.length;
      opts.onProgress?.(written);
    });
  } catch (e) {
    if (e instanceof RelayError) throw e;
    if (e instanceof DeviceError) throw new RelayError('DeviceWriteFailed', `writing the target data_fd failed: ${e.message} (${e.errno})`);
    if (opts.signal.aborted) throw new RelayError('Cancelled', `the receive was cancelled: ${String(opts.signal.reason)}`);
    throw new RelayError('StreamAborted', `the stream from the source broke after ${got.bytes} bytes: ${(e as Error).message}`);
  }
  return check({ bytes: got.bytes, digest: digest.value() }, opts.trailers());
}

function check(got: Received, trailers: IncomingHttpHeaders | undefined): Received {
  if (trailers === undefined) {
    throw new RelayError('StreamAborted', `the stream ended after ${got.bytes} bytes without its trailers (the source did not finish)`);
  }
  const sentBytes = Number(trailers[Wire.bytes]);
  const sentDigest = String(trailers[Wire.digest] ?? '');
  if (sentBytes !== got.bytes) {
    const how = got.bytes < sentBytes ? 'short' : 'long';
    throw new RelayError('StreamMismatch', `the stream is ${how}: the source sent ${sentBytes} bytes, ${got.bytes} arrived`);
  }
  if (sentDigest !== got.digest) {
    throw new RelayError('StreamMismatch', `the stream is corrupt: the source's digest is ${sentDigest}, what arrived hashes to ${got.digest}`);
  }
  return got;
}

/** The device gets writes of this size: few large writes, not one per HTTP/2 frame. */
const BATCH = 1 << 20;
/** Write buffers: one being written, the others filling while it is. All the memory a stream holds. */
const BUFFERS = 4;

/**
 * Feeds the stream to `write` in BATCH-sized writes, one write at a time. Each arriving chunk is
 * copied at once into a fixed set of buffers, so node:http2's chunk dies young: chunks held until a
 * write finished outlived scavenges, and their memory then waited for a full mark-compact (52 per GiB
 * on the target before, 25-35 after). With every buffer full the stream pauses, and a slow device
 * stops the source through flow control. `got` counts what arrived; `onBatch` sees each batch, in
 * order, before it is written. (Not for-await: leaving it early destroys the stream, and the answer
 * saying why could no longer be sent.) The idle clock runs only while we wait for the source: not
 * while the stream is paused for our own device's writes, nor once it ended.
 */
function consume(stream: ServerHttp2Stream, opts: Pick<ReceiveOptions, 'signal' | 'idleMs'>, got: { bytes: number }, onBatch: (b: Buffer) => void,
  write: (b: Buffer) => Promise<void>): Promise<void> {
  const { signal, idleMs } = opts;
  return new Promise((resolve, reject) => {
    const free: Buffer[] = Array.from({ length: BUFFERS }, () => Buffer.allocUnsafe(BATCH));
    const full: Array<{ whole: Buffer; n: number }> = [];
    let fill: Buffer | undefined = free.pop();
    let filled = 0;
    /** What did not fit while every buffer was full; the stream is paused until it does. */
    let leftover: Buffer | undefined;
    let writing = false;
    let ended = false;
    let failed = false;
    /** Runs while we wait for the source; one timer, refreshed by each chunk (not one per chunk). */
    let idle: NodeJS.Timeout | undefined;
    const stalled = () => stop(new RelayError('StreamStalled',
      `the source sent nothing for ${idleMs} ms after ${got.bytes} bytes (stalled, or the connection is half-open); the stream is aborted (timeouts.streamIdle)`));
    const waitForSource = (waiting: boolean) => {
      if (waiting && !failed) {
        if (idle) idle.refresh();
        else idle = setTimeout(stalled, idleMs);
        return;
      }
      clearTimeout(idle);
      idle = undefined;
    };
    const stop = (e: unknown) => {
      if (failed) return;
      failed = true;
      clearTimeout(idle);
      stream.off('data', onData);
      stream.pause();
      signal.removeEventListener('abort', onAbort);
      reject(e instanceof Error ? e : new Error(String(e)));
    };
    const onAbort = () => stop(signal.reason);
    const seal = () => {
      const whole = fill as Buffer;
      onBatch(whole.subarray(0, filled));
      full.push({ whole, n: filled });
      fill = free.pop();
      filled = 0;
    };
    /** Copies as much of `chunk` as there is room for; returns what is left (empty when all fit). */
    const take = (chunk: Buffer): Buffer => {
      let at = 0;
      while (at < chunk.length && fill) {
        const k = chunk.copy(fill, filled, at);
        filled += k;
        at += k;
        if (filled === BATCH) seal();
      }
      return chunk.subarray(at);
    };
    const pump = () => {
      if (failed || writing) return;
      if (full.length === 0 && ended && !leftover && fill && filled > 0) seal();
      const next = full.shift();
      if (!next) {
        if (ended && !leftover) {
          signal.removeEventListener('abort', onAbort);
          resolve();
        }
        return;
      }
      writing = true;
      write(next.whole.subarray(0, next.n)).then(() => {
        writing = false;
        // The buffer is free again: it becomes the fill buffer if there is none.
        if (fill) free.push(next.whole);
        else fill = next.whole;
        if (leftover) {
          const rest = take(leftover);
          leftover = rest.length > 0 ? rest : undefined;
          if (!leftover && !ended) {
            stream.resume();
            waitForSource(true);
          }
        }
        pump();
      }, stop);
    };
    const onData = (chunk: Buffer) => {
      got.bytes += chunk.length;
      const rest = take(chunk);
      if (rest.length > 0) {
        leftover = rest;
        stream.pause();
      }
      waitForSource(!leftover);
      pump();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    stream.on('data', onData);
    waitForSource(true);
    stream.once('end', () => {
      ended = true;
      waitForSource(false);
      pump();
    });
    stream.once('aborted', () => stop(new Error('the source reset the stream')));
    stream.once('error', stop);
  });
}
