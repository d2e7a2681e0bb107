/**
 * The simulated driver's migration stream. Like a real driver's, it is opaque to everything but the
 * driver: devmig's relay only moves bytes. Its checks are what RESUMING -> STOP validates.
 *
 *   header  32 B: magic "DMSIMv1\0", stateSize u64, pageSize u32, pageCount u32, reserved 8
 *   record  16 B header + data: type u8 (1 = page, 2 = end), pad 3, index u32, length u32, crc32 u32
 *   end     type 2: index = pageCount, length = records sent, crc32 = crc32 over the page CRCs
 *
 * A page can be sent many times (PRE_COPY resends what the workload dirtied); the last copy wins.
 * The end record's check covers the CRC of the last copy of every page, so a stream that lost,
 * duplicated out of order or altered a page fails validation even when each record is intact.
 */
// The IEEE CRC-32 (zlib's values) with SIMD: 16 GB/s here against zlib's 2.5, and the simulator's
// page checks are per byte on both agents' main threads.
import { crc32 } from '../../native.js';

export const MAGIC = Buffer.from('DMSIMv1\0', 'latin1');
export const HEADER_SIZE = 32;
export const RECORD_HEADER = 16;
export const RecordType = { PAGE: 1, END: 2 } as const;

export interface StreamHeader {
  readonly stateSize: number;
  readonly pageSize: number;
  readonly pageCount: number;
}

export function encodeHeader(h: StreamHeader): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(b, 0);
  b.writeBigUInt64LE(BigInt(h.stateSize), 8);
  b.writeUInt32LE(h.pageSize, 16);
  b.writeUInt32LE(h.pageCount, 20);
  return b;
}

export function decodeHeader(b: Buffer): StreamHeader | string {
  if (!b.subarray(0, 8).equals(MAGIC)) return 'the stream does not start with the simulated driver\'s header (wrong or corrupt stream)';
  return { stateSize: Number(b.readBigUInt64LE(8)), pageSize: b.readUInt32LE(16), pageCount: b.readUInt32LE(20) };
}

export interface RecordHeader {
  readonly type: number;
  readonly index: number;
  readonly length: number;
  readonly crc: number;
}

export function writeRecordHeader(target: Buffer, r: RecordHeader): void {
  target.fill(0, 0, RECORD_HEADER);
  target.writeUInt8(r.type, 0);
  target.writeUInt32LE(r.index, 4);
  target.writeUInt32LE(r.length, 8);
  target.writeUInt32LE(r.crc >>> 0, 12);
}

export function readRecordHeader(b: Buffer): RecordHeader {
  return { type: b.readUInt8(0), index: b.readUInt32LE(4), length: b.readUInt32LE(8), crc: b.readUInt32LE(12) };
}

/** The end record's check: crc32 over the little-endian CRCs of every page's last copy. */
export function stateCheck(pageCrcs: Uint32Array): number {
  return crc32(Buffer.from(pageCrcs.buffer, pageCrcs.byteOffset, pageCrcs.byteLength));
}

export { crc32 };
