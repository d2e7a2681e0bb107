/**
 * The native addons (prebuilt per platform by their packages), loaded so that a platform without a
 * build still runs: the SIMD CRC-32 falls back to zlib's (the same values, a sixth of the speed), and
 * BLAKE3 says why it is missing, for the agent to name in its refusal of `digest: blake3`.
 */
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

const require = createRequire(import.meta.url);

export interface Hasher {
  update(b: Uint8Array): unknown;
  digest(format: 'hex'): string;
}

function load<T>(name: string, pick: (m: Record<string, unknown>) => T): T | Error {
  try {
    return pick(require(name) as Record<string, unknown>);
  } catch (e) {
    return e instanceof Error ? e : new Error(String(e));
  }
}

const crc = load('@node-rs/crc32', (m) => m.crc32 as (b: Uint8Array, initial?: number) => number);

/** The IEEE CRC-32 (zlib's values): @node-rs/crc32's SIMD one where it loads, zlib's otherwise. */
export const crc32: (b: Uint8Array, initial?: number) => number = crc instanceof Error ? (b, initial) => zlibCrc32(b, initial) : crc;

/** BLAKE3 from @napi-rs/blake-hash, or the error that kept it from loading. */
export const Blake3 = load('@napi-rs/blake-hash', (m) => m.Blake3Hasher as new () => Hasher);
