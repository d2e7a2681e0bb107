/**
 * The kernel backend: a VFIO device driven through ioctls called with koffi.
 *
 * The C library it binds (open, close, ioctl) is configurable: by default the system's libc, or
 * `{ libc: path }` / $DEVMIG_VFIO_LIBC, which the tests point at a C double of the kernel's VFIO
 * interface (test/cdouble/vfio_double.c).
 *
 * ioctls are synchronous koffi calls on the main thread: errno must be read on the thread that made
 * the call, and koffi cannot call a variadic function (ioctl) asynchronously. Arcs are short driver
 * operations; the long part of a migration, the data_fd stream, goes through the libuv threadpool.
 */
import koffi from 'koffi';
import { readSync, writeSync } from 'node:fs';
import { constants } from 'node:os';
import { DeviceError, errnoMessages, type DataStream, type MigrationDevice, type PrecopyInfo, type SetStateResult } from './device.js';
import { FdResumeStream, FdSaveStream } from './datafd.js';
import { arcOpensDataFd, PlanRefused, planArcs, type Arc } from './planner.js';
import {
  Feature, FEATURE_PAYLOAD, Ioctl, Layout, MigState, VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE1v2_IOMMU,
  decodeMigState, decodePrecopyInfo, encodeMigState, featureBuffer, precopyInfoBuffer, stateName, type MigStateName,
} from './uapi.js';
import { walkTo, type ArcStepper } from './walk.js';

/**
 * A device by its iommufd cdev, or by its legacy group and its name in the group: a PCI address
 * (0000:3b:00.1) or, for a mediated device, its UUID. Paths default to /dev's.
 */
export type KernelDeviceSpec =
  | { readonly cdev: string; readonly iommu?: string }
  | { readonly group: string; readonly device: string; readonly container?: string };

export interface KernelOptions {
  /** The C library to call through; default $DEVMIG_VFIO_LIBC, else libc.so.6. */
  readonly libc?: string;
}

interface Libc {
  open(path: string, flags: number, ...mode: unknown[]): number;
  close(fd: number): number;
  ioctl(fd: number, request: number, ...arg: unknown[]): number;
}

const libs = new Map<string, Libc>();

function loadLibc(path: string): Libc {
  let lib = libs.get(path);
  if (!lib) {
    const l = koffi.load(path);
    lib = {
      open: l.func('int open(const char *path, int flags, ...)') as Libc['open'],
      close: l.func('int close(int fd)') as Libc['close'],
      ioctl: l.func('int ioctl(int fd, unsigned long request, ...)') as Libc['ioctl'],
    };
    libs.set(path, lib);
  }
  return lib;
}

export function libcPath(opts: KernelOptions = {}): string {
  return opts.libc ?? process.env.DEVMIG_VFIO_LIBC ?? 'libc.so.6';
}

/**
 * errno number -> name: Node's os.constants.errno, then koffi's platform table for the Linux-only
 * names Node leaves out (EBADFD, EREMOTEIO, ...). Node's name wins where two names share a number.
 */
const errnoNames = new Map<number, string>();
for (const table of [constants.errno, koffi.os.errno] as Record<string, number>[]) {
  for (const [name, n] of Object.entries(table)) if (!errnoNames.has(n)) errnoNames.set(n, name);
}
export const errnoName = (n: number): string => errnoNames.get(n) ?? `E${n}`;

const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;

/**
 * A failed call's errno as a DeviceError. The message says what failed and why in words; the errno
 * name travels in `errno` (callers print both). `message` replaces the generic text when the caller
 * knows what this errno means here.
 */
function failure(errno: number, what: string, device?: string, message?: string): DeviceError {
  const name = errnoName(errno);
  const why = errnoMessages[name];
  return new DeviceError(name, message ?? (why ? `${what} failed: ${why}` : `${what} failed with ${name}`), device);
}

function check(ret: number, what: string, device?: string): number {
  if (ret < 0) throw failure(koffi.errno(), what, device);
  return ret;
}

/** Opens a device by either path. Whatever was opened before a failure is closed again. */
export async function openKernelDevice(spec: KernelDeviceSpec, opts: KernelOptions = {}): Promise<KernelDevice> {
  const libc = loadLibc(libcPath(opts));
  const held: number[] = [];
  try {
    if ('cdev' in spec) return new KernelDevice(spec.cdev, libc, openCdev(libc, spec, held), held);
    return new KernelDevice(spec.device, libc, openGroupDevice(libc, spec, held), held);
  } catch (e) {
    for (const fd of held.reverse()) libc.close(fd);
    throw e;
  }
}

/**
 * A KernelDevice over fds this process already has: copies taken from the fd holder after an agent
 * restart (pidfd_getfd), so the device was never closed and never reset. `fds[0]` is the device fd.
 */
export function adoptKernelDevice(name: string, fds: number[], opts: KernelOptions = {}): KernelDevice {
  const [fd, ...held] = fds;
  if (fd === undefined) throw new DeviceError('EBADF', `${name}: no fds to adopt`);
  return new KernelDevice(name, loadLibc(libcPath(opts)), fd, held);
}

function openPath(libc: Libc, path: string, held: number[], hint?: string): number {
  const fd = libc.open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const errno = koffi.errno();
    throw failure(errno, `open ${path}`, undefined, errnoName(errno) === 'EBUSY' && hint ? `open ${path} failed: ${hint}` : undefined);
  }
  held.push(fd);
  return fd;
}

/** iommufd cdev: open the device and /dev/iommu, then VFIO_DEVICE_BIND_IOMMUFD grants access. */
function openCdev(libc: Libc, spec: { cdev: string; iommu?: string }, held: number[]): number {
  const fd = openPath(libc, spec.cdev, held, 'the device is open elsewhere (a VM or another agent holds it)');
  const iommuPath = spec.iommu ?? '/dev/iommu';
  const iommufd = openPath(libc, iommuPath, held);
  const f = Layout.vfio_device_bind_iommufd.fields;
  const bind = Buffer.alloc(Layout.vfio_device_bind_iommufd.size);
  bind.writeUInt32LE(bind.length, f.argsz.offset);
  bind.writeUInt32LE(0, f.flags.offset);
  bind.writeInt32LE(iommufd, f.iommufd.offset);
  check(libc.ioctl(fd, Ioctl.VFIO_DEVICE_BIND_IOMMUFD, 'void *', bind), `VFIO_DEVICE_BIND_IOMMUFD ${spec.cdev} to ${iommuPath}`);
  held.splice(held.indexOf(fd), 1); // from here the KernelDevice owns it: closed once, before `held`
  return fd;
}

/**
 * Legacy path: container, group (viable), container set, TYPE1v2 IOMMU (mdevs too: theirs is the
 * emulated IOMMU of the mdev bus), then the device by its name in the group.
 */
function openGroupDevice(libc: Libc, spec: { group: string; device: string; container?: string }, held: number[]): number {
  const containerPath = spec.container ?? '/dev/vfio/vfio';
  const container = openPath(libc, containerPath, held);
  const version = check(libc.ioctl(container, Ioctl.VFIO_GET_API_VERSION), `VFIO_GET_API_VERSION on ${containerPath}`);
  if (version !== VFIO_API_VERSION) {
    throw new DeviceError('EINVAL', `${containerPath} speaks VFIO API version ${version}; devmig knows version ${VFIO_API_VERSION}`);
  }
  const group = openPath(libc, spec.group, held, 'the group is open elsewhere (a VM or another agent holds it)');
  if (!groupViable(libc, group, spec.group)) {
    throw new DeviceError('EBUSY', `${spec.group} is not viable: every device in the IOMMU group must be bound to a vfio driver (or unbound)`);
  }
  const cfd = Buffer.alloc(4);
  cfd.writeInt32LE(container, 0);
  check(libc.ioctl(group, Ioctl.VFIO_GROUP_SET_CONTAINER, 'void *', cfd), `VFIO_GROUP_SET_CONTAINER ${spec.group}`);
  check(libc.ioctl(container, Ioctl.VFIO_SET_IOMMU, 'long', VFIO_TYPE1v2_IOMMU), `VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU) on ${containerPath}`);
  const fd = check(libc.ioctl(group, Ioctl.VFIO_GROUP_GET_DEVICE_FD, 'const char *', spec.device), `VFIO_GROUP_GET_DEVICE_FD ${spec.device} from ${spec.group}`);
  return fd; // the KernelDevice's own fd, closed before `held`
}

function groupViable(libc: Libc, group: number, path: string): boolean {
  const f = Layout.vfio_group_status.fields;
  const status = Buffer.alloc(Layout.vfio_group_status.size);
  status.writeUInt32LE(status.length, f.argsz.offset);
  check(libc.ioctl(group, Ioctl.VFIO_GROUP_GET_STATUS, 'void *', status), `VFIO_GROUP_GET_STATUS ${path}`);
  return (status.readUInt32LE(f.flags.offset) & VFIO_GROUP_FLAGS_VIABLE) !== 0;
}

/** The saving group of states shares one data transfer session (include/uapi/linux/vfio.h). */
const SAVING: ReadonlySet<MigStateName> = new Set(['PRE_COPY', 'PRE_COPY_P2P', 'STOP_COPY']);

export class KernelDevice implements MigrationDevice, ArcStepper {
  private save: FdSaveStream | undefined;
  private resume: FdResumeStream | undefined;
  private migFlags = 0;
  private closed = false;

  /**
   * @param fd the device fd: whoever holds it holds the device's state (the kernel resets a device on
   *   its last close). Public for diagnostics and for the test double's per-device functions.
   * @param held the group/container or iommufd fds opened with it, closed after it.
   */
  constructor(readonly name: string, private readonly libc: Libc, readonly fd: number, private readonly held: number[]) {}

  /** Every fd that keeps the device open: the device fd first, then its group/container/iommufd. */
  get fds(): number[] {
    return [this.fd, ...this.held];
  }

  /** The migration flags from the last probe (0 before one). */
  get flags(): number {
    return this.migFlags;
  }

  async probe(): Promise<number> {
    const buf = featureBuffer(Feature.GET | Feature.MIGRATION, Layout.vfio_device_feature_migration.size);
    this.feature(buf, 'VFIO_DEVICE_FEATURE_MIGRATION', {
      ENOTTY: `${this.name} has no migration support (its driver does not implement VFIO_DEVICE_FEATURE_MIGRATION)`,
    });
    this.migFlags = Number(buf.readBigUInt64LE(FEATURE_PAYLOAD + Layout.vfio_device_feature_migration.fields.flags.offset));
    return this.migFlags;
  }

  async getState(): Promise<MigStateName> {
    const buf = featureBuffer(Feature.GET | Feature.MIG_DEVICE_STATE, Layout.vfio_device_feature_mig_state.size);
    this.feature(buf, 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET)');
    return stateName(decodeMigState(buf).deviceState);
  }

  /** ArcStepper: the state the walk starts from, and reads back after a failed arc. */
  current(): Promise<MigStateName> {
    return this.getState();
  }

  /** One SET per planned arc (walk.ts), so each is timed and a failure lands on its own arc. */
  async setState(target: MigStateName): Promise<SetStateResult> {
    this.assertOpen();
    if (this.migFlags === 0) await this.probe();
    return walkTo(this, target);
  }

  /**
   * ArcStepper: exactly one VFIO_DEVICE_FEATURE SET|MIG_DEVICE_STATE. Throws DeviceError. Only an arc
   * the planner itself would take reaches the ioctl: STOP_COPY -> PRE_COPY(_P2P) spins forever inside
   * the ioctl on kernels before the 2026 fix (6.12.95 among them), and no caller may send it.
   */
  async step(arc: Arc): Promise<DataStream | undefined> {
    if (this.migFlags === 0) await this.probe();
    this.assertOneArc(arc);
    // Leaving RESUMING commits what was written: our end of the data_fd is finished with (QEMU
    // closes it before this arc too).
    if (arc.from === 'RESUMING') await this.endResume();
    const buf = encodeMigState(MigState[arc.to]);
    this.feature(buf, `SET ${arc.from} -> ${arc.to}`);
    const { dataFd } = decodeMigState(buf);
    // PRE_COPY(_P2P) -> STOP_COPY: from now on the PRE_COPY data_fd's end is the stream's end.
    if (arc.to === 'STOP_COPY') this.save?.stopCopy();
    // An arc out of the saving group terminates the session; moving inside it (PRE_COPY -> STOP_COPY)
    // keeps the same data_fd going.
    if (SAVING.has(arc.from) && !SAVING.has(arc.to)) await this.endSave();
    return this.adoptDataFd(arc, dataFd);
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    this.assertOpen();
    if (!this.save) throw new DeviceError('EINVAL', `${this.name}: VFIO_MIG_GET_PRECOPY_INFO needs an open PRE_COPY data_fd (none is open)`, this.name);
    const buf = precopyInfoBuffer();
    const ret = this.libc.ioctl(this.save.fd, Ioctl.VFIO_MIG_GET_PRECOPY_INFO, 'void *', buf);
    if (ret < 0) throw failure(koffi.errno(), `${this.name}: VFIO_MIG_GET_PRECOPY_INFO`, this.name);
    return decodePrecopyInfo(buf);
  }

  async stopCopySize(): Promise<bigint> {
    const buf = featureBuffer(Feature.GET | Feature.MIG_DATA_SIZE, Layout.vfio_device_feature_mig_data_size.size);
    this.feature(buf, 'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE');
    return buf.readBigUInt64LE(FEATURE_PAYLOAD + Layout.vfio_device_feature_mig_data_size.fields.stop_copy_length.offset);
  }

  private assertOneArc(arc: Arc): void {
    let plan: Arc[];
    try {
      plan = planArcs(arc.from, arc.to, this.migFlags);
    } catch (e) {
      if (!(e instanceof PlanRefused)) throw e;
      throw new DeviceError('EINVAL', `${this.name}: SET ${arc.from} -> ${arc.to} not sent: ${e.why}`, this.name);
    }
    if (plan.length !== 1) {
      throw new DeviceError('EINVAL', `${this.name}: SET ${arc.from} -> ${arc.to} not sent: it is not one arc (the kernel walks ${plan.map((a) => a.to).join(' -> ')}); issue the planner's arcs`, this.name);
    }
  }

  /** VFIO_DEVICE_GET_REGION_INFO: where region `index` (BAR0 is 0) lies in the device fd, and its size. */
  region(index: number): { offset: bigint; size: bigint; flags: number } {
    this.assertOpen();
    const f = Layout.vfio_region_info.fields;
    const buf = Buffer.alloc(Layout.vfio_region_info.size);
    buf.writeUInt32LE(buf.length, f.argsz.offset);
    buf.writeUInt32LE(index, f.index.offset);
    check(this.libc.ioctl(this.fd, Ioctl.VFIO_DEVICE_GET_REGION_INFO, 'void *', buf), `${this.name}: VFIO_DEVICE_GET_REGION_INFO(${index})`, this.name);
    return { offset: buf.readBigUInt64LE(f.offset.offset), size: buf.readBigUInt64LE(f.size.offset), flags: buf.readUInt32LE(f.flags.offset) };
  }

  /** Reads `length` bytes at `at` inside region `index`: what the device shows its driver there. */
  readRegion(index: number, at: number, length: number): Buffer {
    const r = this.inRegion(index, at, length);
    const buf = Buffer.alloc(length);
    const n = readSync(this.fd, buf, 0, length, r);
    if (n !== length) throw new DeviceError('EIO', `${this.name}: region ${index} gave ${n} of ${length} bytes at ${at}`, this.name);
    return buf;
  }

  writeRegion(index: number, at: number, data: Buffer): void {
    const n = writeSync(this.fd, data, 0, data.length, this.inRegion(index, at, data.length));
    if (n !== data.length) throw new DeviceError('EIO', `${this.name}: region ${index} took ${n} of ${data.length} bytes at ${at}`, this.name);
  }

  /** The fd offset of byte `at` of region `index` (region offsets are below 2^53: index << 40 at most). */
  private inRegion(index: number, at: number, length: number): number {
    const r = this.region(index);
    if (at < 0 || BigInt(at + length) > r.size) {
      throw new DeviceError('EINVAL', `${this.name}: bytes ${at}..${at + length} lie outside region ${index} (${r.size} bytes)`, this.name);
    }
    return Number(r.offset) + at;
  }

  /** VFIO_DEVICE_RESET: the kernel ends any data session, so our stream objects end first. */
  async reset(): Promise<void> {
    this.assertOpen();
    await this.endSave();
    await this.endResume();
    check(this.libc.ioctl(this.fd, Ioctl.VFIO_DEVICE_RESET), `${this.name}: VFIO_DEVICE_RESET`, this.name);
  }

  /** Streams first, then the device fd (the device resets), then the group/container or iommufd. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.endSave();
    await this.endResume();
    this.libc.close(this.fd);
    for (const fd of [...this.held].reverse()) this.libc.close(fd);
  }

  /** Wraps a data_fd the arc returned; one session at a time, so an older stream has ended. */
  private async adoptDataFd(arc: Arc, dataFd: number): Promise<DataStream | undefined> {
    const opens = arcOpensDataFd(arc);
    if (dataFd < 0) {
      if (opens) throw new DeviceError('EPROTO', `${this.name}: SET ${arc.from} -> ${arc.to} returned no data_fd`, this.name);
      return undefined;
    }
    if (!opens) {
      // Only the arcs above open a session; an fd from any other would be leaked if kept.
      this.libc.close(dataFd);
      return undefined;
    }
    await this.endSave();
    await this.endResume();
    if (opens === 'save') return (this.save = new FdSaveStream(dataFd, this.name, arc.to === 'STOP_COPY'));
    return (this.resume = new FdResumeStream(dataFd, this.name));
  }

  private async endSave(): Promise<void> {
    const s = this.save;
    this.save = undefined;
    await s?.close();
  }

  private async endResume(): Promise<void> {
    const r = this.resume;
    this.resume = undefined;
    await r?.close();
  }

  /** VFIO_DEVICE_FEATURE with a featureBuffer; errno becomes a DeviceError (messages by errno name). */
  private feature(buf: Buffer, what: string, messages: Readonly<Record<string, string>> = {}): void {
    this.assertOpen();
    if (this.libc.ioctl(this.fd, Ioctl.VFIO_DEVICE_FEATURE, 'void *', buf) >= 0) return;
    const errno = koffi.errno();
    throw failure(errno, `${this.name}: ${what}`, this.name, messages[errnoName(errno)]);
  }

  private assertOpen(): void {
    // A closed fd number may already belong to something else: never ioctl it.
    if (this.closed) throw new Error(`${this.name}: the device is closed`);
  }
}
