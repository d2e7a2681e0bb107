/**
 * MigrationDevice: one VFIO device's migration interface, whatever sits behind it (the kernel through
 * ioctls, or the simulated driver). The agent drives the FSM only through this.
 */
import type { MigStateName } from './uapi.js';

/** One FSM arc as it happened on a device: the unit that status records. */
export interface ArcResult {
  readonly from: MigStateName;
  readonly to: MigStateName;
  /** ISO-8601 start time. */
  readonly startedAt: string;
  readonly durationMs: number;
  readonly result: 'Succeeded' | 'Failed';
  /** errno name (EINVAL, EIO, ...) when the arc failed. */
  readonly errno?: string;
  readonly message?: string;
}

/**
 * The saving side of a data transfer session (data_fd from STOP -> STOP_COPY or RUNNING -> PRE_COPY).
 * read() fills `buf` and returns the byte count; 0 is the end of the stream (STOP_COPY has sent it all);
 * 'ENOMSG' is PRE_COPY's temporary end of data: more may come, poll or ask precopy info again.
 */
export interface SaveStream {
  readonly kind: 'save';
  read(buf: Buffer): Promise<number | 'ENOMSG'>;
  close(): Promise<void>;
}

/** The resuming side (data_fd from STOP -> RESUMING): bytes written in the order they were read. */
export interface ResumeStream {
  readonly kind: 'resume';
  write(buf: Buffer): Promise<void>;
  close(): Promise<void>;
}

export type DataStream = SaveStream | ResumeStream;

export interface SetStateResult {
  /** Every arc attempted, in order; the last one failed if the request failed. */
  readonly arcs: ArcResult[];
  /** The state the device is in afterwards (read back with GET after a failure). */
  readonly state: MigStateName;
  /** Present when an arc opened a new data transfer session. */
  readonly stream?: DataStream;
  /** Set when the request failed. */
  readonly error?: DeviceError;
}

export interface PrecopyInfo {
  readonly initialBytes: bigint;
  readonly dirtyBytes: bigint;
}

export interface MigrationDevice {
  /** Stable name: sim device name, or the PCI address / cdev path of a kernel device. */
  readonly name: string;
  /** VFIO_DEVICE_FEATURE_MIGRATION: the device's migration flags (throws DeviceError ENOTTY without). */
  probe(): Promise<number>;
  getState(): Promise<MigStateName>;
  /** Walks the planner's arcs one SET at a time so every arc is timed and recorded. */
  setState(target: MigStateName): Promise<SetStateResult>;
  /** VFIO_MIG_GET_PRECOPY_INFO on the open PRE_COPY data_fd. */
  precopyInfo(): Promise<PrecopyInfo>;
  /** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: the driver's estimate of the stop-copy size. */
  stopCopySize(): Promise<bigint>;
  /** VFIO_DEVICE_RESET: the only way out of ERROR; the device comes back RUNNING, its state lost. */
  reset(): Promise<void>;
  /** Drops our hold on the device. The kernel resets it on last close. */
  close(): Promise<void>;
}

/** A failure a device reported, with the kernel's errno name. */
export class DeviceError extends Error {
  override readonly name = 'DeviceError';
  constructor(readonly errno: string, message: string, readonly device?: string) {
    super(message);
  }
}

export const errnoMessages: Readonly<Record<string, string>> = {
  ENOTTY: 'the device has no migration support (VFIO_DEVICE_FEATURE_MIGRATION is not implemented)',
  EINVAL: 'the kernel refused the request as invalid',
  EIO: 'the device failed the operation (I/O error)',
  ENOMSG: 'no data available right now (temporary end of PRE_COPY data)',
  EBUSY: 'the device is busy (held by another user)',
  ENOENT: 'no such device',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENODEV: 'the device is gone',
};
