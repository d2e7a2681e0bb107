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
  try {
    await consume(stream, opts.signal, async (b) => {
      digest.update(b);
      bytes += b.length;
      await resume.write(b);
      opts.onProgress?.(bytes);
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

/**
 * Feeds each chunk to `write`, pausing the stream until the write is done: the unread data holds the
 * HTTP/2 window, which stops the source. (Not for-await: leaving it early destroys the stream, and the
 * answer saying why could no longer be sent.)
 */
function consume(stream: ServerHttp2Stream, signal: AbortSignal, write: (b: Buffer) => Promise<void>): Promise<void> {
  return new Promise((resolve, reject) => {
    const stop = (e: unknown) => {
      stream.off('data', onData);
      stream.pause();
      signal.removeEventListener('abort', onAbort);
      reject(e instanceof Error ? e : new Error(String(e)));
    };
    const onAbort = () => stop(signal.reason);
    // 'end' can come while the last write is still under way: it waits for that write.
    let pending: Promise<void> = Promise.resolve();
    const onData = (chunk: Buffer) => {
      stream.pause();
      pending = write(chunk).then(() => { stream.resume(); }, (e: unknown) => { stop(e); throw e; });
    };
    signal.addEventListener('abort', onAbort, { once: true });
    stream.on('data', onData);
    stream.once('end', () => {
      pending.then(() => { signal.removeEventListener('abort', onAbort); resolve(); }, () => undefined);
    });
    stream.once('aborted', () => stop(new Error('the source reset the stream')));
    stream.once('error', stop);
  });
}
