/**
 * src/vfio/uapi.ts against the machine's <linux/vfio.h>, through a compiled C probe
 * (test/cprobe/uapi_probe.c) that prints the header's values, sizes and offsets.
 *
 * What the header here (linux-libc-dev 6.1) is too old to have is checked against literal values
 * read from the kernel's own include/uapi/linux/vfio.h (torvalds/linux, read at commit
 * 02256acf1e81e42f6338a39020bf2de9807c33d7): PRE_COPY came in 6.2 with MIG_DATA_SIZE and
 * VFIO_MIG_GET_PRECOPY_INFO, BIND_IOMMUFD in 6.6. Where a newer header does have them, the probe
 * reports them and they are compared with the header instead, as everything else is.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import {
  Feature, FLAG_NAMES, Ioctl, Layout, MigFlag, MigState, STATE_NAMES, VFIO_API_VERSION, VFIO_BASE, VFIO_GROUP_FLAGS_VIABLE,
  VFIO_TYPE, VFIO_TYPE1v2_IOMMU,
} from '../../src/vfio/uapi.js';
import { buildC } from '../helpers/cbuild.js';

let h: Record<string, number>;
beforeAll(async () => {
  const probe = await buildC('test/cprobe/uapi_probe.c', 'uapi_probe', []);
  h = JSON.parse((await promisify(execFile)(probe)).stdout) as Record<string, number>;
});

/** What our names are in the header. */
const headerName = {
  state: (n: string) => `VFIO_DEVICE_STATE_${n}`,
  flag: (n: string) => `VFIO_MIGRATION_${n}`,
  feature: (n: string) => `VFIO_DEVICE_FEATURE_${n}`,
};

/** Every value uapi.ts declares, under the header's name. */
function ours(): Record<string, number> {
  const v: Record<string, number> = {
    VFIO_TYPE, VFIO_BASE, VFIO_API_VERSION, VFIO_TYPE1v2_IOMMU, VFIO_GROUP_FLAGS_VIABLE, ...Ioctl,
  };
  for (const n of STATE_NAMES) v[headerName.state(n)] = MigState[n];
  for (const n of FLAG_NAMES) v[headerName.flag(n)] = MigFlag[n];
  for (const [n, x] of Object.entries(Feature)) v[headerName.feature(n)] = x;
  for (const [struct, layout] of Object.entries(Layout)) {
    v[`sizeof ${struct}`] = layout.size;
    for (const [field, f] of Object.entries(layout.fields as Record<string, { offset: number; size: number }>)) {
      v[`${struct}.${field}`] = f.offset;
      v[`sizeof ${struct}.${field}`] = f.size;
    }
  }
  return v;
}

const io = (nr: number) => (0x3b << 8) | (100 + nr);

/** From the kernel source (see the header comment), for what the 6.1 header lacks. */
const KERNEL_SOURCE: Record<string, number> = {
  // enum vfio_device_mig_state { ..., VFIO_DEVICE_STATE_PRE_COPY = 6, VFIO_DEVICE_STATE_PRE_COPY_P2P = 7, }
  VFIO_DEVICE_STATE_PRE_COPY: 6,
  VFIO_DEVICE_STATE_PRE_COPY_P2P: 7,
  // #define VFIO_MIGRATION_PRE_COPY (1 << 2)
  VFIO_MIGRATION_PRE_COPY: 1 << 2,
  // #define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
  VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: 9,
  // struct vfio_device_feature_mig_data_size { __aligned_u64 stop_copy_length; };
  'sizeof vfio_device_feature_mig_data_size': 8,
  'vfio_device_feature_mig_data_size.stop_copy_length': 0,
  'sizeof vfio_device_feature_mig_data_size.stop_copy_length': 8,
  // #define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)
  VFIO_MIG_GET_PRECOPY_INFO: io(21),
  // struct vfio_precopy_info { __u32 argsz; __u32 flags; __aligned_u64 initial_bytes; __aligned_u64 dirty_bytes; };
  'sizeof vfio_precopy_info': 24,
  'vfio_precopy_info.argsz': 0, 'sizeof vfio_precopy_info.argsz': 4,
  'vfio_precopy_info.flags': 4, 'sizeof vfio_precopy_info.flags': 4,
  'vfio_precopy_info.initial_bytes': 8, 'sizeof vfio_precopy_info.initial_bytes': 8,
  'vfio_precopy_info.dirty_bytes': 16, 'sizeof vfio_precopy_info.dirty_bytes': 8,
  // #define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
  VFIO_DEVICE_BIND_IOMMUFD: io(18),
  // struct vfio_device_bind_iommufd { __u32 argsz; __u32 flags; __s32 iommufd; __u32 out_devid;
  //   __aligned_u64 token_uuid_ptr; /* since 6.17 */ }; the kernel's minsz is offsetofend(out_devid),
  // so the 16-byte form we send is accepted by every kernel that has the ioctl.
  'sizeof vfio_device_bind_iommufd': 16,
  'vfio_device_bind_iommufd.argsz': 0, 'sizeof vfio_device_bind_iommufd.argsz': 4,
  'vfio_device_bind_iommufd.flags': 4, 'sizeof vfio_device_bind_iommufd.flags': 4,
  'vfio_device_bind_iommufd.iommufd': 8, 'sizeof vfio_device_bind_iommufd.iommufd': 4,
  'vfio_device_bind_iommufd.out_devid': 12, 'sizeof vfio_device_bind_iommufd.out_devid': 4,
};

/** What a 6.1 header must have: missing here means the probe, not the header, is wrong. */
const OLD_ENOUGH = (name: string) => !(name in KERNEL_SOURCE);

it('the probe reports everything the 6.1 header defines', () => {
  const missing = Object.keys(ours()).filter((n) => OLD_ENOUGH(n) && !(n in h));
  expect(missing).toEqual([]);
});

it('every value, size and offset uapi.ts declares matches the header where the header has it', () => {
  const v = ours();
  const inHeader = Object.keys(v).filter((n) => n in h && n !== 'sizeof vfio_device_bind_iommufd');
  expect(Object.fromEntries(inHeader.map((n) => [n, v[n]]))).toEqual(Object.fromEntries(inHeader.map((n) => [n, h[n]])));
  expect(inHeader.length).toBeGreaterThanOrEqual(40);
});

it('what the header lacks matches the kernel source, and uapi.ts declares all of it', () => {
  const v = ours();
  const lacking = Object.keys(KERNEL_SOURCE).filter((n) => !(n in h));
  expect(Object.fromEntries(lacking.map((n) => [n, v[n]]))).toEqual(Object.fromEntries(lacking.map((n) => [n, KERNEL_SOURCE[n]])));
  // A header that has them must agree with the kernel source too (BIND's size grew in 6.17: see above).
  const present = Object.keys(KERNEL_SOURCE).filter((n) => n in h && n !== 'sizeof vfio_device_bind_iommufd');
  expect(Object.fromEntries(present.map((n) => [n, h[n]]))).toEqual(Object.fromEntries(present.map((n) => [n, KERNEL_SOURCE[n]])));
});

it('the newer ioctl numbers use this machine\'s _IO() encoding', () => {
  expect([h['_IO+18'], h['_IO+21']]).toEqual([Ioctl.VFIO_DEVICE_BIND_IOMMUFD, Ioctl.VFIO_MIG_GET_PRECOPY_INFO]);
});

it('BIND_IOMMUFD is sent as the kernel\'s minimum size, whatever the header\'s struct has grown to', () => {
  const f = Layout.vfio_device_bind_iommufd.fields.out_devid;
  expect(Layout.vfio_device_bind_iommufd.size).toBe(f.offset + f.size);
  if ('sizeof vfio_device_bind_iommufd' in h) expect([16, 24]).toContain(h['sizeof vfio_device_bind_iommufd']);
});
