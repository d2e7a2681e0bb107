/**
 * The end-to-end check that travels with a stream (DESIGN.md invariant 5): a byte count and a digest,
 * computed inline by both ends, sent by the source in HTTP/2 trailers, compared by the target before
 * it lets RESUMING -> STOP happen.
 */
import { createHash, type Hash } from 'node:crypto';
import { crc32 } from 'node:zlib';

export type DigestAlgorithm = 'sha256' | 'crc32';
export const DIGEST_ALGORITHMS: readonly DigestAlgorithm[] = ['sha256', 'crc32'];

export interface StreamDigest {
  readonly algorithm: DigestAlgorithm;
  update(chunk: Buffer): void;
  /** "sha256:<hex>" or "crc32:<hex>". */
  value(): string;
}

export function createStreamDigest(algorithm: DigestAlgorithm): StreamDigest {
  if (algorithm === 'crc32') {
    let c = 0;
    return { algorithm, update: (b) => { c = crc32(b, c); }, value: () => `crc32:${(c >>> 0).toString(16).padStart(8, '0')}` };
  }
  const h: Hash = createHash('sha256');
  let done: string | undefined;
  return {
    algorithm,
    update: (b) => { h.update(b); },
    value: () => (done ??= `sha256:${h.digest('hex')}`),
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
