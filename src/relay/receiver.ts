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

export async function receiveStream(
  stream: ServerHttp2Stream,
  resume: ResumeStream,
  opts: { algorithm: DigestAlgorithm; signal: AbortSignal; trailers: () => IncomingHttpHeaders | undefined; onProgress?: (bytes: number) => void },
): Promise<Received> {
  const digest = createStreamDigest(opts.algorithm);
  let bytes = 0;
  let written = 0;
  try {
    await consume(stream, opts.signal, (b) => {
      digest.update(b);
      bytes += b.length;
    }, async (b) => {
      await resume.write(b);
      written += b.length;
      opts.onProgress?.(written);
    });
  } catch (e) {
    if (e instanceof DeviceError) throw new RelayError('DeviceWriteFailed', `writing the target data_fd failed: ${e.message} (${e.errno})`);
    if (opts.signal.aborted) throw new RelayError('Cancelled', `the receive was cancelled: ${String(opts.signal.reason)}`);
    throw new RelayError('StreamAborted', `the stream from the source broke after ${bytes} bytes: ${(e as Error).message}`);
  }
  return check({ bytes, digest: digest.value() }, opts.trailers());
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

/** Chunks are gathered into writes of this size: the device gets few large writes, not many frames. */
const BATCH = 1 << 20;
/** Past this much gathered and unwritten, the stream pauses: its unread data holds the HTTP/2 window. */
const HIGH_WATER = 4 << 20;

/**
 * Feeds the stream to `write` in batches, one write at a time, reading on while a write is under way
 * and pausing past HIGH_WATER, so a slow device stops the source through flow control. (Not for-await:
 * leaving it early destroys the stream, and the answer saying why could no longer be sent.)
 */
function consume(stream: ServerHttp2Stream, signal: AbortSignal, onChunk: (b: Buffer) => void,
  write: (b: Buffer) => Promise<void>): Promise<void> {
  return new Promise((resolve, reject) => {
    let batch: Buffer[] = [];
    let gathered = 0;
    let writing: Promise<void> | undefined;
    let ended = false;
    let failed = false;
    const stop = (e: unknown) => {
      if (failed) return;
      failed = true;
      stream.off('data', onData);
      stream.pause();
      signal.removeEventListener('abort', onAbort);
      reject(e instanceof Error ? e : new Error(String(e)));
    };
    const onAbort = () => stop(signal.reason);
    // One gathering buffer, reused: the device write is awaited before the next batch is built.
    const gather = Buffer.allocUnsafe(HIGH_WATER + BATCH);
    const flush = () => {
      const data = batch.length === 1 ? batch[0]! : gathered <= gather.length ? concatInto(gather, batch) : Buffer.concat(batch, gathered);
      batch = [];
      gathered = 0;
      writing = write(data).then(next, stop);
    };
    const next = () => {
      writing = undefined;
      if (failed) return;
      if (gathered >= BATCH || (ended && gathered > 0)) return flush();
      if (ended) {
        signal.removeEventListener('abort', onAbort);
        return resolve();
      }
      stream.resume();
    };
    const onData = (chunk: Buffer) => {
      onChunk(chunk);
      batch.push(chunk);
      gathered += chunk.length;
      if (gathered >= HIGH_WATER) stream.pause();
      if (!writing && gathered >= BATCH) flush();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    stream.on('data', onData);
    stream.once('end', () => {
      ended = true;
      if (!writing) next();
    });
    stream.once('aborted', () => stop(new Error('the source reset the stream')));
    stream.once('error', stop);
  });
}

function concatInto(target: Buffer, parts: Buffer[]): Buffer {
  let at = 0;
  for (const p of parts) at += p.copy(target, at);
  return target.subarray(0, at);
}
