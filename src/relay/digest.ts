/**
 * The end-to-end check that travels with a stream (DESIGN.md invariant 5): a byte count and a digest,
 * computed inline by both ends, sent by the source in HTTP/2 trailers, compared by the target before
 * it lets RESUMING -> STOP happen.
 */
import { createHash } from 'node:crypto';
import { Blake3, crc32, type Hasher } from '../native.js';
import { RelayError } from './errors.js';

/**
 * blake3 (the default) is a cryptographic hash like SHA-256 at about five times its speed on one core
 * (SIMD): with SHA-256 the digest took a quarter of both agents' CPU in bench:relay. crc32 catches
 * accidents only.
 */
export const DIGEST_ALGORITHMS = ['blake3', 'sha256', 'crc32'] as const;
export type DigestAlgorithm = (typeof DIGEST_ALGORITHMS)[number];

/** Why this machine cannot compute `algorithm` (no build of its addon for the platform), if it cannot. */
export function unavailable(algorithm: DigestAlgorithm): string | undefined {
  if (algorithm !== 'blake3' || !(Blake3 instanceof Error)) return undefined;
  return `blake3 is not available on ${process.platform}-${process.arch}: @napi-rs/blake-hash did not load ` +
    `(${Blake3.message.split('\n')[0]}); use digest: sha256`;
}

/** blake3 where it loads; sha256 on a platform without a build of it. */
export const DEFAULT_DIGEST: DigestAlgorithm = unavailable('blake3') ? 'sha256' : 'blake3';

export interface StreamDigest {
  readonly algorithm: DigestAlgorithm;
  update(chunk: Buffer): void;
  /** "<algorithm>:<hex>", e.g. "blake3:6437b3ac...". */
  value(): string;
}

export function createStreamDigest(algorithm: DigestAlgorithm): StreamDigest {
  if (algorithm === 'crc32') {
    let c = 0;
    return { algorithm, update: (b) => { c = crc32(b, c); }, value: () => `crc32:${(c >>> 0).toString(16).padStart(8, '0')}` };
  }
  const why = unavailable(algorithm);
  if (why) throw new RelayError('DigestUnavailable', why, 422);
  const h: Hasher = algorithm === 'blake3' ? new (Blake3 as new () => Hasher)() : createHash('sha256');
  let done: string | undefined;
  return {
    algorithm,
    update: (b) => { h.update(b); },
    value: () => (done ??= `${algorithm}:${h.digest('hex')}`),
  };
}

export function algorithmOf(digest: string): DigestAlgorithm | undefined {
  const a = digest.split(':')[0];
  return (DIGEST_ALGORITHMS as readonly string[]).includes(a ?? '') ? (a as DigestAlgorithm) : undefined;
}

/** Trailer and header names on the wire. */
export const Wire = {
  bytes: 'devmig-bytes',
  digest: 'devmig-digest',
  ticket: 'devmig-ticket',
  device: 'devmig-device',
  algorithm: 'devmig-digest-algorithm',
} as const;
