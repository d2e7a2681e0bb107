/**
 * The saving side of a simulated data_fd. It produces the stream lazily from the state file, one page
 * record at a time, so memory stays at one page whatever the state size.
 *
 * PRE_COPY: every page is queued once (the initial bytes); pages the workload dirties afterwards are
 * queued again (the dirty bytes). With both sent, read() answers ENOMSG: the protocol's temporary end
 * of data. STOP_COPY: the rest, then the end record, then EOF for good.
 */
import type { FileHandle } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceError, type SaveStream } from '../device.js';
import type { StreamFault } from './faults.js';
import { HEADER_SIZE, RECORD_HEADER, RecordType, crc32, encodeHeader, stateCheck, writeRecordHeader } from './format.js';

/** What the session needs from its device. */
export interface SaveSource {
  readonly name: string;
  readonly stateSize: number;
  readonly pageSize: number;
  readonly pageCount: number;
  readonly stateFile: FileHandle;
  /** Marks of pages written since tracking started; the session clears a mark when it reads the page. */
  readonly dirty: Uint8Array;
  fallIntoError(): Promise<void>;
}

export class SimSaveSession implements SaveStream {
  readonly kind = 'save';
  private readonly queue: number[] = [];
  private initialLeft: number;
  private readonly pageCrcs: Uint32Array;
  private readonly record: Buffer;
  private pending: Buffer;
  private pendingAt = 0;
  private records = 0;
  private stopCopy: boolean;
  private endSent = false;
  private ended: string | undefined;
  private produced = 0;
  private readonly startedAt = Date.now();

  constructor(private readonly src: SaveSource, precopy: boolean, private readonly faults: StreamFault[]) {
    this.stopCopy = !precopy;
    for (let i = 0; i < src.pageCount; i++) this.queue.push(i);
    this.initialLeft = src.pageCount;
    this.pageCrcs = new Uint32Array(src.pageCount);
    this.record = Buffer.allocUnsafe(RECORD_HEADER + src.pageSize);
    this.pending = encodeHeader({ stateSize: src.stateSize, pageSize: src.pageSize, pageCount: src.pageCount });
    src.dirty.fill(0);
  }

  /** PRE_COPY -> STOP_COPY: the device stopped; what is dirty now is the last of it. */
  enterStopCopy(): void {
    this.stopCopy = true;
  }

  /** The device left the data state: the session is over and the fd reads as an error. */
  end(why: string): void {
    this.ended ??= why;
  }

  get bytesProduced(): number {
    return this.produced;
  }

  precopyInfo(): { initialBytes: bigint; dirtyBytes: bigint } {
    const per = BigInt(RECORD_HEADER + this.src.pageSize);
    let dirty = 0;
    for (const d of this.src.dirty) dirty += d;
    const pendingLeft = BigInt(this.pending.length - this.pendingAt);
    return { initialBytes: BigInt(this.initialLeft) * per + pendingLeft, dirtyBytes: BigInt(dirty) * per };
  }

  /** MIG_DATA_SIZE while this session is open: what STOP_COPY would still have to send. */
  stopCopyEstimate(): bigint {
    const { initialBytes, dirtyBytes } = this.precopyInfo();
    return initialBytes + dirtyBytes + BigInt(RECORD_HEADER);
  }

  async read(buf: Buffer): Promise<number | 'ENOMSG'> {
    if (this.ended !== undefined) throw new DeviceError('ENODEV', `${this.src.name}: data_fd closed: ${this.ended}`, this.src.name);
    let n = 0;
    while (n < buf.length) {
      if (this.pendingAt < this.pending.length) {
        n += this.copyPending(buf, n);
        continue;
      }
      if (!(await this.nextRecord())) break;
    }
    if (n === 0 && !this.stopCopy) return 'ENOMSG';
    return this.applyFaults(buf, n);
  }

  async close(): Promise<void> {
    this.end('closed');
  }

  private copyPending(buf: Buffer, at: number): number {
    const k = this.pending.copy(buf, at, this.pendingAt);
    this.pendingAt += k;
    return k;
  }

  /** Loads the next record into `pending`; false when there is nothing to send right now (or ever). */
  private async nextRecord(): Promise<boolean> {
    if (this.queue.length === 0) this.queueDirty();
    const page = this.queue.shift();
    if (page !== undefined) {
      if (this.initialLeft > 0) this.initialLeft--;
      await this.loadPage(page);
      return true;
    }
    if (!this.stopCopy || this.endSent) return false;
    this.endSent = true;
    writeRecordHeader(this.record, { type: RecordType.END, index: this.src.pageCount, length: this.records, crc: stateCheck(this.pageCrcs) });
    this.setPending(this.record.subarray(0, RECORD_HEADER));
    return true;
  }

  private queueDirty(): void {
    const dirty = this.src.dirty;
    for (let i = 0; i < dirty.length; i++) if (dirty[i] === 1) this.queue.push(i);
  }

  private async loadPage(page: number): Promise<void> {
    const { pageSize, stateSize, stateFile: file } = this.src;
    const offset = page * pageSize;
    const length = Math.min(pageSize, stateSize - offset);
    // Reading captures the page as it is now; a later write marks it dirty again.
    this.src.dirty[page] = 0;
    const data = this.record.subarray(RECORD_HEADER, RECORD_HEADER + length);
    const { bytesRead } = await file.read(data, 0, length, offset);
    if (bytesRead !== length) throw new DeviceError('EIO', `${this.src.name}: state file short at page ${page}`, this.src.name);
    const crc = crc32(data);
    this.pageCrcs[page] = crc;
    writeRecordHeader(this.record, { type: RecordType.PAGE, index: page, length, crc });
    this.records++;
    this.setPending(this.record.subarray(0, RECORD_HEADER + length));
  }

  private setPending(b: Buffer): void {
    this.pending = b;
    this.pendingAt = 0;
  }

  private async applyFaults(buf: Buffer, n: number): Promise<number> {
    const start = this.produced;
    let count = n;
    for (const f of this.faults) {
      const at = f.atByte ?? 0;
      if (f.stream === 'truncate' && start + count > at) count = Math.max(0, at - start);
      if (f.stream === 'corrupt' && at >= start && at < start + count) buf[at - start] = (buf[at - start] ?? 0) ^ 0xff;
      if (f.stream === 'error' && start + count > at) {
        await this.src.fallIntoError();
        this.end(`injected ${f.errno} at byte ${at}`);
        throw new DeviceError(f.errno, `${this.src.name}: injected stream fault ${f.errno} at byte ${at}; the device fell into ERROR`, this.src.name);
      }
      if (f.stream === 'slow' && f.bytesPerSecond) await this.throttle(start + count, f.bytesPerSecond);
    }
    this.produced += count;
    return count;
  }

  private async throttle(total: number, rate: number): Promise<void> {
    const due = this.startedAt + (total / rate) * 1000;
    const wait = due - Date.now();
    if (wait > 0) await sleep(wait);
  }
}

export const STREAM_HEADER_SIZE = HEADER_SIZE;
