/**
 * The VFIO migration v2 user API (include/uapi/linux/vfio.h), as numbers and byte layouts.
 *
 * Everything here is checked against the machine's <linux/vfio.h> by a compiled C probe
 * (test/unit/uapi-probe.test.ts); what is newer than that header (PRE_COPY, MIG_DATA_SIZE,
 * PRECOPY_INFO, BIND_IOMMUFD) is checked against the values in the kernel's own source.
 */

/** enum vfio_device_mig_state. ERROR can be observed but never requested. */
export const MigState = {
  ERROR: 0,
  STOP: 1,
  RUNNING: 2,
  STOP_COPY: 3,
  RESUMING: 4,
  RUNNING_P2P: 5,
  PRE_COPY: 6,
  PRE_COPY_P2P: 7,
} as const;
export type MigStateName = keyof typeof MigState;
export type MigStateValue = (typeof MigState)[MigStateName];
export const STATE_NAMES: readonly MigStateName[] = [
  'ERROR', 'STOP', 'RUNNING', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P',
];

export function stateName(value: number): MigStateName {
  const name = STATE_NAMES[value];
  if (name === undefined) throw new RangeError(`unknown VFIO migration state ${value}`);
  return name;
}

export function parseStateName(text: string): MigStateName {
  const upper = text.trim().toUpperCase();
  if ((STATE_NAMES as readonly string[]).includes(upper)) return upper as MigStateName;
  throw new RangeError(`unknown VFIO migration state "${text}": expected one of ${STATE_NAMES.join(', ')}`);
}

/** struct vfio_device_feature_migration.flags */
export const MigFlag = {
  STOP_COPY: 1 << 0,
  P2P: 1 << 1,
  PRE_COPY: 1 << 2,
} as const;
export type MigFlagName = keyof typeof MigFlag;
export const FLAG_NAMES: readonly MigFlagName[] = ['STOP_COPY', 'P2P', 'PRE_COPY'];

export function flagNames(flags: number): MigFlagName[] {
  return FLAG_NAMES.filter((n) => (flags & MigFlag[n]) !== 0);
}

/** Parses "STOP_COPY,P2P" (case-insensitive, spaces allowed) into a flag mask. */
export function parseFlags(text: string): number {
  let mask = 0;
  for (const raw of text.split(',')) {
    const part = raw.trim().toUpperCase();
    if (part === '') continue;
    if (!(FLAG_NAMES as readonly string[]).includes(part)) {
      throw new RangeError(`unknown migration flag "${raw.trim()}": expected a comma list of ${FLAG_NAMES.join(', ')}`);
    }
    mask |= MigFlag[part as MigFlagName];
  }
  if ((mask & MigFlag.STOP_COPY) === 0) {
    throw new RangeError('migration flags must include STOP_COPY: the kernel requires it of every migration driver');
  }
  return mask;
}

/** _IO(type, nr): direction and size bits are zero for every VFIO ioctl; argsz travels in the struct. */
export const VFIO_TYPE = ';'.charCodeAt(0);
export const VFIO_BASE = 100;
const io = (nr: number): number => (VFIO_TYPE << 8) | nr;

export const Ioctl = {
  VFIO_GET_API_VERSION: io(VFIO_BASE + 0),
  VFIO_CHECK_EXTENSION: io(VFIO_BASE + 1),
  VFIO_SET_IOMMU: io(VFIO_BASE + 2),
  VFIO_GROUP_GET_STATUS: io(VFIO_BASE + 3),
  VFIO_GROUP_SET_CONTAINER: io(VFIO_BASE + 4),
  VFIO_GROUP_GET_DEVICE_FD: io(VFIO_BASE + 6),
  VFIO_DEVICE_GET_INFO: io(VFIO_BASE + 7),
  VFIO_DEVICE_GET_REGION_INFO: io(VFIO_BASE + 8),
  VFIO_DEVICE_RESET: io(VFIO_BASE + 11),
  VFIO_DEVICE_FEATURE: io(VFIO_BASE + 17),
  VFIO_DEVICE_BIND_IOMMUFD: io(VFIO_BASE + 18),
  VFIO_MIG_GET_PRECOPY_INFO: io(VFIO_BASE + 21),
} as const;

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;

/** struct vfio_device_feature.flags */
export const Feature = {
  MASK: 0xffff,
  GET: 1 << 16,
  SET: 1 << 17,
  PROBE: 1 << 18,
  MIGRATION: 1,
  MIG_DEVICE_STATE: 2,
  MIG_DATA_SIZE: 9,
} as const;

/** A C struct's size and field offsets, as the compiled probe reports them. */
export interface StructLayout {
  readonly size: number;
  readonly fields: Readonly<Record<string, { readonly offset: number; readonly size: number }>>;
}

export const Layout = {
  vfio_device_feature: { size: 8, fields: { argsz: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 } } },
  vfio_device_feature_migration: { size: 8, fields: { flags: { offset: 0, size: 8 } } },
  vfio_device_feature_mig_state: {
    size: 8,
    fields: { device_state: { offset: 0, size: 4 }, data_fd: { offset: 4, size: 4 } },
  },
  vfio_device_feature_mig_data_size: { size: 8, fields: { stop_copy_length: { offset: 0, size: 8 } } },
  vfio_precopy_info: {
    size: 24,
    fields: {
      argsz: { offset: 0, size: 4 },
      flags: { offset: 4, size: 4 },
      initial_bytes: { offset: 8, size: 8 },
      dirty_bytes: { offset: 16, size: 8 },
    },
  },
  vfio_device_bind_iommufd: {
    size: 16,
    fields: {
      argsz: { offset: 0, size: 4 },
      flags: { offset: 4, size: 4 },
      iommufd: { offset: 8, size: 4 },
      out_devid: { offset: 12, size: 4 },
    },
  },
  vfio_group_status: { size: 8, fields: { argsz: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 } } },
  vfio_region_info: {
    size: 32,
    fields: {
      argsz: { offset: 0, size: 4 },
      flags: { offset: 4, size: 4 },
      index: { offset: 8, size: 4 },
      cap_offset: { offset: 12, size: 4 },
      size: { offset: 16, size: 8 },
      offset: { offset: 24, size: 8 },
    },
  },
} as const satisfies Record<string, StructLayout>;

/** struct vfio_device_feature followed by a payload: the argument of VFIO_DEVICE_FEATURE. */
export function featureBuffer(flags: number, payloadSize: number): Buffer {
  const buf = Buffer.alloc(Layout.vfio_device_feature.size + payloadSize);
  buf.writeUInt32LE(buf.length, Layout.vfio_device_feature.fields.argsz.offset);
  buf.writeUInt32LE(flags >>> 0, Layout.vfio_device_feature.fields.flags.offset);
  return buf;
}

/** Offset of the payload inside a featureBuffer. */
export const FEATURE_PAYLOAD = Layout.vfio_device_feature.size;

export function encodeMigState(state: number): Buffer {
  const buf = featureBuffer(Feature.SET | Feature.MIG_DEVICE_STATE, Layout.vfio_device_feature_mig_state.size);
  buf.writeUInt32LE(state, FEATURE_PAYLOAD + Layout.vfio_device_feature_mig_state.fields.device_state.offset);
  buf.writeInt32LE(-1, FEATURE_PAYLOAD + Layout.vfio_device_feature_mig_state.fields.data_fd.offset);
  return buf;
}

export function decodeMigState(buf: Buffer): { deviceState: number; dataFd: number } {
  const f = Layout.vfio_device_feature_mig_state.fields;
  return {
    deviceState: buf.readUInt32LE(FEATURE_PAYLOAD + f.device_state.offset),
    dataFd: buf.readInt32LE(FEATURE_PAYLOAD + f.data_fd.offset),
  };
}

export function precopyInfoBuffer(): Buffer {
  const buf = Buffer.alloc(Layout.vfio_precopy_info.size);
  buf.writeUInt32LE(buf.length, Layout.vfio_precopy_info.fields.argsz.offset);
  return buf;
}

export function decodePrecopyInfo(buf: Buffer): { initialBytes: bigint; dirtyBytes: bigint } {
  const f = Layout.vfio_precopy_info.fields;
  return { initialBytes: buf.readBigUInt64LE(f.initial_bytes.offset), dirtyBytes: buf.readBigUInt64LE(f.dirty_bytes.offset) };
}
