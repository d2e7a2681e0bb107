/**
 * The kernel backend: a VFIO device driven through ioctls called with koffi. The C library it binds
 * (open, close, ioctl) is configurable, so the tests load a C double of the kernel's VFIO interface
 * in its place (test/cdouble/vfio_double.c); by default it is the system's libc.
 */
import koffi from 'koffi';
import { constants } from 'node:os';
import { DeviceError, type DataStream, type MigrationDevice, type PrecopyInfo, type SetStateResult } from './device.js';
import { FdResumeStream, FdSaveStream } from './datafd.js';
import { arcOpensDataFd, type Arc } from './planner.js';
import {
  Feature, FEATURE_PAYLOAD, Ioctl, Layout, MigState, VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE1v2_IOMMU,
  decodeMigState, decodePrecopyInfo, encodeMigState, featureBuffer, precopyInfoBuffer, stateName, type MigStateName,
} from './uapi.js';
import { walkTo, type ArcStepper } from './walk.js';

export type KernelDeviceSpec =
  | { readonly cdev: string; readonly iommu?: string }
  | { readonly group: string; readonly bdf: string; readonly container?: string };

export interface KernelOptions {
  /** The C library to call through; default $DEVMIG_VFIO_LIBC or libc.so.6. */
  readonly libc?: string;
}

interface Libc {
  open(path: string, flags: number): number;
  close(fd: number): number;
  ioctl(fd: number, request: number, ...args: unknown[]): number;
}

const libs = new Map<string, Libc>();

function loadLibc(path: string): Libc {
  let lib = libs.get(path);
  if (!lib) {
    const l = koffi.load(path);
    lib = {
      open: l.func('int open(const char *path, int flags)') as Libc['open'],
      close: l.func('int close(int fd)') as Libc['close'],
      ioctl: l.func('int ioctl(int fd, unsigned long request, ...)') as Libc['ioctl'],
    };
    libs.set(path, lib);
  }
  return lib;
}

const errnoNames = new Map<number, string>(Object.entries(constants.errno).map(([k, v]) => [v, k]));
export const errnoName = (n: number): string => errnoNames.get(n) ?? `E${n}`;
const O_RDWR = 2;
const O_CLOEXEC = 0o2000000;

export async function openKernelDevice(spec: KernelDeviceSpec, opts: KernelOptions = {}): Promise<KernelDevice> {
  const libc = loadLibc(opts.libc ?? process.env.DEVMIG_VFIO_LIBC ?? 'libc.so.6');
  const held: number[] = [];
  try {
    const fd = 'cdev' in spec ? openCdev(libc, spec, held) : openGroupDevice(libc, spec, held);
    const name = 'cdev' in spec ? spec.cdev : spec.bdf;
    return new KernelDevice(name, libc, fd, held);
  } catch (e) {
    for (const f of held.reverse()) libc.close(f);
    throw e;
  }
}

function sys(ret: number, what: string): number {
  if (ret >= 0) return ret;
  const errno = errnoName(koffi.errno());
  throw new DeviceError(errno, `${what} failed: ${errno}`);
}

function openCdev(libc: Libc, spec: { cdev: string; iommu?: string }, held: number[]): number {
  const fd = sys(libc.open(spec.cdev, O_RDWR | O_CLOEXEC), `open ${spec.cdev}`);
  held.push(fd);
  const iommu = spec.iommu ?? '/dev/iommu';
  const iommufd = sys(libc.open(iommu, O_RDWR | O_CLOEXEC), `open ${iommu}`);
  held.push(iommufd);
  const bind = Buffer.alloc(Layout.vfio_device_bind_iommufd.size);
  bind.writeUInt32LE(bind.length, Layout.vfio_device_bind_iommufd.fields.argsz.offset);
  bind.writeInt32LE(iommufd, Layout.vfio_device_bind_iommufd.fields.iommufd.offset);
  sys(libc.ioctl(fd, Ioctl.VFIO_DEVICE_BIND_IOMMUFD, 'void *', bind), `VFIO_DEVICE_BIND_IOMMUFD on ${spec.cdev}`);
  return fd;
}

function openGroupDevice(libc: Libc, spec: { group: string; bdf: string; container?: string }, held: number[]): number {
  const containerPath = spec.container ?? '/dev/vfio/vfio';
  const container = sys(libc.open(containerPath, O_RDWR | O_CLOEXEC), `open ${containerPath}`);
  held.push(container);
  const version = sys(libc.ioctl(container, Ioctl.VFIO_GET_API_VERSION), 'VFIO_GET_API_VERSION');
  if (version !== VFIO_API_VERSION) throw new DeviceError('EINVAL', `${containerPath}: VFIO API version ${version}, expected ${VFIO_API_VERSION}`);
  const group = sys(libc.open(spec.group, O_RDWR | O_CLOEXEC), `open ${spec.group}`);
  held.push(group);
  const status = Buffer.alloc(Layout.vfio_group_status.size);
  status.writeUInt32LE(status.length, 0);
  sys(libc.ioctl(group, Ioctl.VFIO_GROUP_GET_STATUS, 'void *', status), `VFIO_GROUP_GET_STATUS on ${spec.group}`);
  if ((status.readUInt32LE(4) & VFIO_GROUP_FLAGS_VIABLE) === 0) {
    throw new DeviceError('EPERM', `${spec.group} is not viable: every device in the IOMMU group must be bound to a vfio driver`);
  }
  const cfd = Buffer.alloc(4);
  cfd.writeInt32LE(container, 0);
  sys(libc.ioctl(group, Ioctl.VFIO_GROUP_SET_CONTAINER, 'void *', cfd), `VFIO_GROUP_SET_CONTAINER on ${spec.group}`);
  sys(libc.ioctl(container, Ioctl.VFIO_SET_IOMMU, 'long', VFIO_TYPE1v2_IOMMU), 'VFIO_SET_IOMMU(TYPE1v2)');
  return sys(libc.ioctl(group, Ioctl.VFIO_GROUP_GET_DEVICE_FD, 'const char *', spec.bdf), `VFIO_GROUP_GET_DEVICE_FD ${spec.bdf}`);
}

export class KernelDevice implements MigrationDevice, ArcStepper {
  private save: FdSaveStream | undefined;
  private resume: FdResumeStream | undefined;
  private migFlags = 0;
  private closed = false;

  constructor(readonly name: string, private readonly libc: Libc, private readonly fd: number, private readonly held: number[]) {}

  get flags(): number {
    return this.migFlags;
  }

  async probe(): Promise<number> {
    const buf = featureBuffer(Feature.GET | Feature.MIGRATION, Layout.vfio_device_feature_migration.size);
    this.ioctl(this.fd, Ioctl.VFIO_DEVICE_FEATURE, buf, 'VFIO_DEVICE_FEATURE_MIGRATION', {
      ENOTTY: `${this.name} has no migration support (its driver does not implement VFIO_DEVICE_FEATURE_MIGRATION)`,
    });
    this.migFlags = Number(buf.readBigUInt64LE(FEATURE_PAYLOAD));
    return this.migFlags;
  }

  async getState(): Promise<MigStateName> {
    const buf = featureBuffer(Feature.GET | Feature.MIG_DEVICE_STATE, Layout.vfio_device_feature_mig_state.size);
    this.ioctl(this.fd, Ioctl.VFIO_DEVICE_FEATURE, buf, 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE (GET)');
    return stateName(decodeMigState(buf).deviceState);
  }

  current(): Promise<MigStateName> {
    return this.getState();
  }

  async setState(target: MigStateName): Promise<SetStateResult> {
    if (this.migFlags === 0) await this.probe();
    return walkTo(this, target);
  }

  async step(arc: Arc): Promise<DataStream | undefined> {
    // Leaving RESUMING: everything has been written; our end of the data_fd is done with.
    if (arc.from === 'RESUMING') await this.endResume();
    const buf = encodeMigState(MigState[arc.to]);
    this.ioctl(this.fd, Ioctl.VFIO_DEVICE_FEATURE, buf, `SET ${arc.from} -> ${arc.to}`);
    const { dataFd } = decodeMigState(buf);
    if (arc.from === 'STOP_COPY' || (arc.from.startsWith('PRE_COPY') && !arc.to.startsWith('PRE_COPY') && arc.to !== 'STOP_COPY')) {
      await this.save?.close();
      this.save = undefined;
    }
    const opens = arcOpensDataFd(arc);
    if (dataFd < 0 || !opens) return undefined;
    if (opens === 'save') {
      await this.save?.close();
      return (this.save = new FdSaveStream(dataFd, this.name));
    }
    return (this.resume = new FdResumeStream(dataFd, this.name));
  }

  async precopyInfo(): Promise<PrecopyInfo> {
    if (!this.save) throw new DeviceError('EINVAL', `${this.name}: VFIO_MIG_GET_PRECOPY_INFO needs an open PRE_COPY data_fd`);
    const buf = precopyInfoBuffer();
    this.ioctl(this.save.fd, Ioctl.VFIO_MIG_GET_PRECOPY_INFO, buf, 'VFIO_MIG_GET_PRECOPY_INFO');
    return decodePrecopyInfo(buf);
  }

  async stopCopySize(): Promise<bigint> {
    const buf = featureBuffer(Feature.GET | Feature.MIG_DATA_SIZE, Layout.vfio_device_feature_mig_data_size.size);
    this.ioctl(this.fd, Ioctl.VFIO_DEVICE_FEATURE, buf, 'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE');
    return buf.readBigUInt64LE(FEATURE_PAYLOAD);
  }

  async reset(): Promise<void> {
    await this.endStreams();
    const ret = this.libc.ioctl(this.fd, Ioctl.VFIO_DEVICE_RESET);
    if (ret < 0) this.fail('VFIO_DEVICE_RESET', koffi.errno());
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.endStreams();
    this.libc.close(this.fd);
    for (const f of [...this.held].reverse()) this.libc.close(f);
  }

  private async endStreams(): Promise<void> {
    await this.save?.close();
    this.save = undefined;
    await this.endResume();
  }

  private async endResume(): Promise<void> {
    await this.resume?.close();
    this.resume = undefined;
  }

  private ioctl(fd: number, request: number, buf: Buffer, what: string, hints: Record<string, string> = {}): void {
    const ret = this.libc.ioctl(fd, request, 'void *', buf);
    if (ret < 0) this.fail(what, koffi.errno(), hints);
  }

  private fail(what: string, errno: number, hints: Record<string, string> = {}): never {
    const name = errnoName(errno);
    throw new DeviceError(name, hints[name] ?? `${this.name}: ${what} failed with ${name}`, this.name);
  }
}
