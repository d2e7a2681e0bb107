/**
 * Our constants and layouts against the machine's <linux/vfio.h>, through a compiled C probe. What the
 * header is too old to have is checked against the values in the kernel's include/uapi/linux/vfio.h.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Feature, FLAG_NAMES, Ioctl, Layout, MigFlag, MigState, VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE1v2_IOMMU } from '../../src/vfio/uapi.js';
import { buildC } from '../helpers/cbuild.js';

let h: Record<string, number>;
beforeAll(async () => {
  const probe = await buildC('test/cprobe/uapi_probe.c', 'uapi_probe', []);
  h = JSON.parse((await promisify(execFile)(probe)).stdout) as Record<string, number>;
});

const same = (ours: number, header: string) => {
  if (!(header in h)) return; // not in this header: see the kernel-source table below
  expect({ [header]: ours }).toEqual({ [header]: h[header] });
};

it('states, flags and features match the header', () => {
  for (const [n, v] of Object.entries(MigState)) same(v, `VFIO_DEVICE_STATE_${n}`);
  for (const n of FLAG_NAMES) same(MigFlag[n], `VFIO_MIGRATION_${n}`);
  same(Feature.MASK, 'VFIO_DEVICE_FEATURE_MASK');
  same(Feature.GET, 'VFIO_DEVICE_FEATURE_GET');
  same(Feature.SET, 'VFIO_DEVICE_FEATURE_SET');
  same(Feature.PROBE, 'VFIO_DEVICE_FEATURE_PROBE');
  same(Feature.MIGRATION, 'VFIO_DEVICE_FEATURE_MIGRATION');
  same(Feature.MIG_DEVICE_STATE, 'VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE');
  same(Feature.MIG_DATA_SIZE, 'VFIO_DEVICE_FEATURE_MIG_DATA_SIZE');
  same(VFIO_API_VERSION, 'VFIO_API_VERSION');
  same(VFIO_TYPE1v2_IOMMU, 'VFIO_TYPE1v2_IOMMU');
  same(VFIO_GROUP_FLAGS_VIABLE, 'VFIO_GROUP_FLAGS_VIABLE');
  expect(h.VFIO_DEVICE_STATE_RUNNING_P2P).toBe(5);
});

it('ioctl numbers match the header', () => {
  for (const [n, v] of Object.entries(Ioctl)) same(v, n);
  expect(Object.keys(Ioctl).filter((n) => n in h).length).toBeGreaterThanOrEqual(9);
});

it('struct sizes and offsets match the header', () => {
  for (const [struct, layout] of Object.entries(Layout)) {
    same(layout.size, `sizeof ${struct}`);
    for (const [field, f] of Object.entries(layout.fields as Record<string, { offset: number }>)) same(f.offset, `${struct}.${field}`);
  }
  expect(h['sizeof vfio_device_feature_mig_state']).toBe(8);
});

it('what is newer than this header matches the kernel source', () => {
  // include/uapi/linux/vfio.h (Linux 6.2+ for PRE_COPY and MIG_DATA_SIZE, 6.6+ for BIND_IOMMUFD):
  //   VFIO_DEVICE_STATE_PRE_COPY = 6, VFIO_DEVICE_STATE_PRE_COPY_P2P = 7, VFIO_MIGRATION_PRE_COPY (1 << 2),
  //   VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9, VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21),
  //   VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18),
  //   struct vfio_precopy_info { __u32 argsz; __u32 flags; __aligned_u64 initial_bytes; __aligned_u64 dirty_bytes; },
  //   struct vfio_device_bind_iommufd { __u32 argsz; __u32 flags; __s32 iommufd; __u32 out_devid; }
  const io = (nr: number) => (0x3b << 8) | (100 + nr);
  expect([MigState.PRE_COPY, MigState.PRE_COPY_P2P, MigFlag.PRE_COPY, Feature.MIG_DATA_SIZE]).toEqual([6, 7, 4, 9]);
  expect([Ioctl.VFIO_MIG_GET_PRECOPY_INFO, Ioctl.VFIO_DEVICE_BIND_IOMMUFD]).toEqual([io(21), io(18)]);
  expect(Layout.vfio_precopy_info).toEqual({ size: 24, fields: { argsz: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 },
    initial_bytes: { offset: 8, size: 8 }, dirty_bytes: { offset: 16, size: 8 } } });
  expect(Layout.vfio_device_bind_iommufd.fields).toEqual({ argsz: { offset: 0, size: 4 }, flags: { offset: 4, size: 4 },
    iommufd: { offset: 8, size: 4 }, out_devid: { offset: 12, size: 4 } });
});
