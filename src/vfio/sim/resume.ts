/**
 * The resuming side of a simulated data_fd. Writes land in a staging file as they arrive; nothing
 * reaches the device's state until RESUMING -> STOP validates the whole stream (commit()).
 */
import type { FileHandle } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceError, type ResumeStream } from '../device.js';
import { formatBytes } from '../../api/quantity.js';
import {
  HEADER_SIZE, RECORD_HEADER, RecordType, crc32, decodeHeader, readRecordHeader, stateCheck, type RecordHeader,
} from './format.js';

export interface ResumeTarget {
  readonly name: string;
  readonly stateSize: number;
  readonly pageSize: number;
  readonly pageCount: number;
  readonly staging: FileHandle;
}

export class SimResumeSession implements ResumeStream {
  readonly kind = 'resume';
  private readonly head = Buffer.alloc(Math.max(HEADER_SIZE, RECORD_HEADER));
  private headHave = 0;
  private headerDone = false;
  private record: RecordHeader | undefined;
  private recordLeft = 0;
  private recordCrc = 0;
  private readonly pageCrcs: Uint32Array;
  private readonly seen: Uint8Array;
  private records = 0;
  private endCheck: { records: number; crc: number } | undefined;
  private failure: string | undefined;
  private written = 0;
  private closed = false;

  private readonly startedAt = Date.now();

  /** `writeRate`: bytes per second this device takes (a slow-write fault), unlimited when unset. */
  constructor(private readonly target: ResumeTarget, private readonly writeRate?: number) {
    this.pageCrcs = new Uint32Array(target.pageCount);
    this.seen = new Uint8Array(target.pageCount);
  }

  get bytesWritten(): number {
    return this.written;
  }

  async write(buf: Buffer): Promise<void> {
    if (this.closed) throw new DeviceError('ENODEV', `${this.target.name}: data_fd closed`, this.target.name);
    if (this.failure !== undefined) throw this.invalid(this.failure);
    let at = 0;
    while (at < buf.length) {
      if (this.endCheck !== undefined) return this.fail(`${buf.length - at} bytes arrived after the end of the stream (stream too long)`);
      at += this.recordLeft > 0 ? await this.writeData(buf.subarray(at)) : this.takeHead(buf.subarray(at));
    }
    this.written += buf.length;
    if (this.writeRate) {
      const wait = this.startedAt + (this.written / this.writeRate) * 1000 - Date.now();
      if (wait > 0) await sleep(wait);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** The RESUMING -> STOP check: the stream must be whole and exact. Returns why not, or undefined. */
  verdict(): string | undefined {
    if (this.failure !== undefined) return this.failure;
    if (!this.headerDone) return `the stream is short: ${this.written} bytes, not even a header`;
    if (this.endCheck === undefined) return `the stream is short: it ended after ${this.written} bytes without its end record`;
    const missing = this.seen.indexOf(0);
    if (missing >= 0) return `the stream is incomplete: page ${missing} of ${this.target.pageCount} never arrived`;
    if (this.endCheck.records !== this.records) return `the stream lost records: ${this.records} arrived, the source sent ${this.endCheck.records}`;
    if (this.endCheck.crc !== stateCheck(this.pageCrcs)) return 'the stream is corrupt: the state check of the end record does not match the pages received';
    return undefined;
  }

  private takeHead(buf: Buffer): number {
    const want = (this.headerDone ? RECORD_HEADER : HEADER_SIZE) - this.headHave;
    const k = Math.min(want, buf.length);
    buf.copy(this.head, this.headHave, 0, k);
    this.headHave += k;
    if (this.headHave === (this.headerDone ? RECORD_HEADER : HEADER_SIZE)) {
      this.headHave = 0;
      if (this.headerDone) this.startRecord(readRecordHeader(this.head));
      else this.checkHeader();
    }
    return k;
  }

  private checkHeader(): void {
    const h = decodeHeader(this.head);
    if (typeof h === 'string') return this.fail(h);
    const t = this.target;
    // Every header byte is checked: a stream whose header was altered anywhere is not this stream.
    if (h.pageCount !== t.pageCount && h.stateSize === t.stateSize && h.pageSize === t.pageSize) {
      return this.fail(`the stream is corrupt: its header counts ${h.pageCount} pages, the state has ${t.pageCount}`);
    }
    if (this.head.subarray(24, HEADER_SIZE).some((b) => b !== 0)) return this.fail('the stream is corrupt: reserved header bytes are not zero');
    if (h.stateSize !== t.stateSize || h.pageSize !== t.pageSize) {
      return this.fail(`incompatible device: the stream holds ${formatBytes(h.stateSize)} of state in ${formatBytes(h.pageSize)} pages, ` +
        `this device holds ${formatBytes(t.stateSize)} in ${formatBytes(t.pageSize)} pages`);
    }
    this.headerDone = true;
  }

  private startRecord(r: RecordHeader): void {
    if (this.head.subarray(1, 4).some((b) => b !== 0)) return this.fail(`the stream is corrupt: a record's padding is not zero at byte ${this.written}`);
    if (r.type === RecordType.END) {
      if (r.index !== this.target.pageCount) return this.fail(`the stream is corrupt: the end record counts ${r.index} pages, the state has ${this.target.pageCount}`);
      this.endCheck = { records: r.length, crc: r.crc };
      return;
    }
    const t = this.target;
    const expect = Math.min(t.pageSize, t.stateSize - r.index * t.pageSize);
    if (r.type !== RecordType.PAGE || r.index >= t.pageCount || r.length !== expect) {
      return this.fail(`the stream is corrupt: bad record (type ${r.type}, page ${r.index}, length ${r.length}) at byte ${this.written}`);
    }
    this.record = r;
    this.recordLeft = r.length;
    this.recordCrc = 0;
  }

  private async writeData(buf: Buffer): Promise<number> {
    const r = this.record as RecordHeader;
    const k = Math.min(this.recordLeft, buf.length);
    const chunk = buf.subarray(0, k);
    const offset = r.index * this.target.pageSize + (r.length - this.recordLeft);
    await this.target.staging.write(chunk, 0, k, offset);
    this.recordCrc = crc32(chunk, this.recordCrc);
    this.recordLeft -= k;
    if (this.recordLeft === 0) this.finishRecord(r);
    return k;
  }

  private finishRecord(r: RecordHeader): void {
    if (this.recordCrc !== r.crc) return this.fail(`the stream is corrupt: page ${r.index} fails its CRC`);
    this.pageCrcs[r.index] = r.crc;
    this.seen[r.index] = 1;
    this.records++;
  }

  private fail(why: string): never {
    this.failure ??= why;
    throw this.invalid(this.failure);
  }

  private invalid(why: string): DeviceError {
    return new DeviceError('EINVAL', `${this.target.name}: ${why}`, this.target.name);
  }
}
