/**
 * A simulated VFIO migration driver: a MigrationDevice that behaves as the kernel documents a
 * driver must (include/uapi/linux/vfio.h), so the whole operator runs on any machine.
 *
 * Layout under `<dir>/<name>/`: `state.bin` (the device's internal state), `device.json` (migration
 * state, flags, generation), `faults.json` (optional injected faults), `resume.bin` (a RESUMING
 * session's staging file), `lock` (the pid holding the device open).
 */
import { randomFillSync } from 'node:crypto';
import { link, mkdir, open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DeviceError, type DataStream, type MigrationDevice, type PrecopyInfo, type SetStateResult } from '../device.js';
import type { Arc } from '../planner.js';
import { MigFlag, type MigStateName } from '../uapi.js';
import { walkTo, type ArcStepper } from '../walk.js';
import { isStreamFault, readFaultFile, takeArcFault, takeSlowArc, type Fault, type StreamFault } from './faults.js';
import { SimResumeSession } from './resume.js';
import { SimSaveSession } from './save.js';
import { acquireLock, releaseLock } from './lock.js';

export interface SimDeviceOptions {
  readonly dir: string;
  readonly name: string;
  readonly flags?: number;
  readonly stateSize?: number;
  readonly pageSize?: number;
  /** Bytes per second the running workload rewrites (0: the state holds still). */
  readonly dirtyRate?: number;
  /** Where a failed RESUMING -> STOP leaves the device: ERROR (default) or RESUMING. */
  readonly resumeFailure?: 'ERROR' | 'RESUMING';
  readonly faults?: Fault[];
  /** A process that keeps the device open across our restarts (see lock.ts). */
  readonly holder?: number;
}

interface Persisted {
  version: 1;
  state: MigStateName;
  flags: number;
  stateSize: number;
  pageSize: number;
  generation: number;
  resets: number;
  /** Reset by its last close (no holder kept it): the next open reports it as reset (resetAtOpen). */
  closedByReset?: boolean;
}

const RUNNING_STATES: ReadonlySet<MigStateName> = new Set(['RUNNING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P']);
export const DEFAULT_FLAGS = MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY;
const DIRTY_TICK_MS = 20;

export function simDeviceDir(dir: string, name: string): string {
  if (!/^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$/.test(name)) {
    throw new DeviceError('EINVAL', `simulated device name "${name}" must be a DNS label (lowercase letters, digits, '-', '.')`);
  }
  return join(dir, name);
}

export class SimDevice implements MigrationDevice, ArcStepper {
  private save: SimSaveSession | undefined;
  private resume: SimResumeSession | undefined;
  private staging: FileHandle | undefined;
  private dirtyTimer: NodeJS.Timeout | undefined;
  private readonly used = new Map<string, number>();
  private closed = false;
  /** Reset when this process opened it (its last holder had closed it): what it held before is gone. */
  resetAtOpen = false;

  private constructor(
    readonly name: string,
    private readonly home: string,
    private readonly opts: SimDeviceOptions,
    private meta: Persisted,
    private file: FileHandle,
    readonly dirty: Uint8Array,
  ) {}

  /** Opens (creating on first use) a simulated device; fails EBUSY while another process holds it. */
  static async open(opts: SimDeviceOptions): Promise<SimDevice> {
    const home = simDeviceDir(opts.dir, opts.name);
    await mkdir(home, { recursive: true });
    const hold = await acquireLock(join(home, 'lock'), opts.name, opts.holder);
    try {
      const meta = await loadOrCreate(home, opts);
      const file = await open(join(home, 'state.bin'), 'r+');
      const dev = new SimDevice(opts.name, home, opts, meta, file, new Uint8Array(Math.ceil(meta.stateSize / meta.pageSize)));
      // Found stopped with nobody holding it: its last holder went away without bringing it back, and
      // the kernel resets a device on last close. So does the simulation. A live holder kept it open:
      // the state is intact, but any data_fd died with the process that had it.
      if (meta.state !== 'RUNNING' && !hold.keptByHolder) {
        await dev.resetState(`found ${meta.state} at open: the last holder closed it`);
        dev.resetAtOpen = true;
      }
      if (meta.closedByReset) dev.resetAtOpen = true;
      delete meta.closedByReset;
      await dev.persist();
      dev.startWorkload();
      return dev;
    } catch (e) {
      await releaseLock(join(home, 'lock'));
      throw e;
    }
  }

  get flags(): number {
    return this.meta.flags;
  }
  get stateSize(): number {
    return this.meta.stateSize;
  }
  get pageSize(): number {
    return this.meta.pageSize;
  }
  get pageCount(): number {
    return this.dirty.length;
  }
  get stateFile(): FileHandle {
    return this.file;
  }
  get generation(): number {
    return this.meta.generation;
  }

  async probe(): Promise<number> {
    this.assertOpen();
    this.assertMigration();
    return this.meta.flags;
  }

  async getState(): Promise<MigStateName> {
    this.assertOpen();
    this.assertMigration();
    return this.meta.state;
  }

  /** Flags 0 simulates a VFIO device whose driver has no migration support: the kernel says ENOTTY. */
  private assertMigration(): void {
    if (this.meta.flags === 0) {
      throw new DeviceError('ENOTTY', `${this.name}: the device's driver has no migration support (VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY)`, this.name);
    }
  }

  async current(): Promise<MigStateName> {
    return this.meta.state;
  }

  async setState(target: MigStateName): Promise<SetStateResult> {
    this.assertOpen();
    this.assertMigration();
    return walkTo(this, target);
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    this.assertOpen();
    if (!this.save || (this.meta.state !== 'PRE_COPY' && this.meta.state !== 'PRE_COPY_P2P')) {
      throw new DeviceError('EINVAL', `${this.name}: VFIO_MIG_GET_PRECOPY_INFO needs an open PRE_COPY data_fd (device is ${this.meta.state})`, this.name);
    }
    return this.save.precopyInfo();
  }

  async stopCopySize(): Promise<bigint> {
    this.assertOpen();
    this.assertMigration();
    if (this.save) return this.save.stopCopyEstimate();
    const per = 16 + this.meta.pageSize;
    return BigInt(32 + this.pageCount * per + 16 - (this.pageCount * this.meta.pageSize - this.meta.stateSize));
  }

  async reset(): Promise<void> {
    this.assertOpen();
    await this.resetState('VFIO_DEVICE_RESET');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.meta.state !== 'RUNNING' && !this.opts.holder) {
      this.meta.closedByReset = true;
      await this.resetState('closed while not RUNNING (the kernel resets on last close)');
    }
    this.closed = true;
    this.stopWorkload();
    await this.endSessions('device closed');
    await this.file.close();
    await releaseLock(join(this.home, 'lock'));
  }

  /** One arc, as a driver's migration_set_state() step would do it. */
  async step(arc: Arc): Promise<DataStream | undefined> {
    const faults = await this.faults();
    const slow = takeSlowArc(faults, this.used, arc.from, arc.to);
    if (slow) await new Promise((r) => setTimeout(r, slow.delayMs));
    const fault = takeArcFault(faults, this.used, arc.from, arc.to);
    if (fault) {
      if (fault.then === 'ERROR') await this.enter('ERROR');
      throw new DeviceError(fault.errno, `${this.name}: injected fault: ${arc.from} -> ${arc.to} failed with ${fault.errno}`, this.name);
    }
    const stream = await this.effect(arc, faults.filter(isStreamFault));
    await this.enter(arc.to);
    return stream;
  }

  /** Marks the device ERROR from inside a stream (a source that fails mid-STOP_COPY). */
  async fallIntoError(): Promise<void> {
    await this.enter('ERROR');
  }

  private async effect(arc: Arc, streamFaults: StreamFault[]): Promise<DataStream | undefined> {
    const { from, to } = arc;
    if (to === 'STOP_COPY' && from === 'STOP') return this.openSave(false, streamFaults);
    if (to === 'PRE_COPY' || to === 'PRE_COPY_P2P') return from.startsWith('PRE_COPY') ? undefined : this.openSave(true, streamFaults);
    if (to === 'STOP_COPY') {
      this.save?.enterStopCopy();
      return undefined;
    }
    if (to === 'RESUMING') return this.openResume(streamFaults.find((f) => f.stream === 'slow-write')?.bytesPerSecond);
    if (from === 'RESUMING') return this.commit();
    if (from === 'STOP_COPY' || from.startsWith('PRE_COPY')) await this.endSessions(`left ${from}`);
    return undefined;
  }

  private openSave(precopy: boolean, faults: StreamFault[]): SimSaveSession {
    this.save?.end('a new save session started');
    this.save = new SimSaveSession(this, precopy, faults);
    return this.save;
  }

  private async openResume(writeRate: number | undefined): Promise<SimResumeSession> {
    await this.endSessions('a new resume session started');
    // The staging file stays allocated between sessions (see preallocateStaging): a resume overwrites
    // every page, and the commit check refuses a stream that left any page unwritten.
    await preallocateStaging(this.home, this.meta.stateSize);
    this.staging = await open(join(this.home, 'resume.bin'), 'r+');
    this.resume = new SimResumeSession({ ...this.geometry(), name: this.name, staging: this.staging }, writeRate);
    return this.resume;
  }

  /** RESUMING -> STOP: the commit gate. The state is adopted only when the stream is whole and exact. */
  private async commit(): Promise<undefined> {
    const why = this.resume ? this.resume.verdict() : 'no resume session is open';
    if (why !== undefined) {
      await this.endSessions('the resume stream was refused');
      if ((this.opts.resumeFailure ?? 'ERROR') === 'ERROR') await this.enter('ERROR');
      throw new DeviceError('EINVAL', `${this.name}: RESUMING -> STOP refused: ${why}`, this.name);
    }
    // No fsync: a device's memory does not outlive a power cut either, and the page cache keeps the
    // staged state across the crash of any process. (Flushing 512 MiB to disk made this arc take
    // ~230 ms, most of bench:downtime's PreCopy downtime, which no real device spends.)
    await this.file.close();
    // Swap staging and state, atomically for the state: the old state keeps a second name first, then
    // the staging file replaces state.bin in one rename, then the old state becomes the next staging.
    await rm(join(this.home, 'resume.next'), { force: true });
    await link(join(this.home, 'state.bin'), join(this.home, 'resume.next'));
    await rename(join(this.home, 'resume.bin'), join(this.home, 'state.bin'));
    await rename(join(this.home, 'resume.next'), join(this.home, 'resume.bin'));
    this.file = await open(join(this.home, 'state.bin'), 'r+');
    await this.endSessions('committed');
    this.meta.generation++;
    return undefined;
  }

  private async endSessions(why: string): Promise<void> {
    this.save?.end(why);
    this.save = undefined;
    await this.resume?.close();
    this.resume = undefined;
    await this.staging?.close();
    this.staging = undefined;
  }

  private async enter(state: MigStateName): Promise<void> {
    this.meta.state = state;
    if (RUNNING_STATES.has(state)) this.startWorkload();
    else this.stopWorkload();
    await this.persist();
  }

  private async resetState(why: string): Promise<void> {
    await this.endSessions(`reset: ${why}`);
    await fillState(this.file, this.meta.stateSize, this.meta.resets + 1);
    this.meta.resets++;
    this.meta.generation++;
    await this.enter('RUNNING');
  }

  private startWorkload(): void {
    const rate = this.opts.dirtyRate ?? 0;
    if (rate <= 0 || this.dirtyTimer || this.closed) return;
    const page = Buffer.alloc(this.meta.pageSize);
    let carry = 0;
    let busy = false;
    this.dirtyTimer = setInterval(() => {
      if (busy) return;
      carry += (rate * DIRTY_TICK_MS) / 1000;
      const pages = Math.floor(carry / this.meta.pageSize);
      if (pages === 0) return;
      carry -= pages * this.meta.pageSize;
      busy = true;
      this.dirtyPages(page, pages).finally(() => { busy = false; }).catch(() => undefined);
    }, DIRTY_TICK_MS);
    this.dirtyTimer.unref();
  }

  private async dirtyPages(page: Buffer, count: number): Promise<void> {
    for (let i = 0; i < count && this.dirtyTimer; i++) {
      const index = Math.floor(Math.random() * this.pageCount);
      const len = Math.min(this.meta.pageSize, this.meta.stateSize - index * this.meta.pageSize);
      randomFillSync(page, 0, Math.min(len, 64));
      await this.file.write(page, 0, Math.min(len, 64), index * this.meta.pageSize);
      this.dirty[index] = 1;
    }
  }

  private stopWorkload(): void {
    if (this.dirtyTimer) clearInterval(this.dirtyTimer);
    this.dirtyTimer = undefined;
  }

  private geometry(): { stateSize: number; pageSize: number; pageCount: number } {
    return { stateSize: this.meta.stateSize, pageSize: this.meta.pageSize, pageCount: this.pageCount };
  }

  private async faults(): Promise<Fault[]> {
    return [...(this.opts.faults ?? []), ...(await readFaultFile(join(this.home, 'faults.json')))];
  }

  private async persist(): Promise<void> {
    const tmp = join(this.home, 'device.json.tmp');
    await writeFile(tmp, JSON.stringify(this.meta, null, 2));
    await rename(tmp, join(this.home, 'device.json'));
  }

  private assertOpen(): void {
    if (this.closed) throw new DeviceError('EBADF', `${this.name}: device is closed`, this.name);
  }
}

async function loadOrCreate(home: string, opts: SimDeviceOptions): Promise<Persisted> {
  const stateSize = opts.stateSize ?? 64 * 2 ** 20;
  const pageSize = opts.pageSize ?? 256 * 2 ** 10;
  let meta: Persisted | undefined;
  try {
    meta = JSON.parse(await readFile(join(home, 'device.json'), 'utf8')) as Persisted;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const sizeGiven = opts.stateSize !== undefined || opts.pageSize !== undefined;
  if (meta && (!sizeGiven || (meta.stateSize === stateSize && meta.pageSize === pageSize))) {
    return { ...meta, flags: opts.flags ?? meta.flags };
  }
  const flags = opts.flags ?? DEFAULT_FLAGS;
  const fresh: Persisted = { version: 1, state: 'RUNNING', flags, stateSize, pageSize, generation: 1, resets: 0 };
  const file = await open(join(home, 'state.bin'), 'w+');
  try {
    await fillState(file, stateSize, 0);
  } finally {
    await file.close();
  }
  await writeFile(join(home, 'device.json'), JSON.stringify(fresh, null, 2));
  await preallocateStaging(home, stateSize);
  return fresh;
}

/**
 * Gives the device its staging memory once, when it is made: a real device's memory exists before a
 * migration, and allocating (and zeroing) pages during the stream would make the simulation, not the
 * relay, the thing a benchmark measures.
 */
async function preallocateStaging(home: string, size: number): Promise<void> {
  const path = join(home, 'resume.bin');
  const st = await stat(path).catch(() => undefined);
  if (st && st.size === size) return;
  const fh = await open(path, 'w');
  try {
    const zeros = Buffer.alloc(Math.min(size, 2 ** 20));
    for (let off = 0; off < size; off += zeros.length) await fh.write(zeros, 0, Math.min(zeros.length, size - off), off);
  } finally {
    await fh.close();
  }
}

/**
 * Fills the state with fresh content: one random block, stamped with its index and an epoch, written
 * over and over. Every block differs (so a misplaced page changes the digest) at disk speed.
 */
async function fillState(file: FileHandle, size: number, epoch: number): Promise<void> {
  const block = randomFillSync(Buffer.allocUnsafe(Math.min(size, 2 ** 20) || 1));
  await file.truncate(size);
  for (let off = 0, i = 0; off < size; off += block.length, i++) {
    const len = Math.min(block.length, size - off);
    if (len >= 16) {
      block.writeUInt32LE(i, 0);
      block.writeUInt32LE(epoch, 4);
      block.writeDoubleLE(Math.random(), 8);
    }
    await file.write(block, 0, len, off);
  }
}
