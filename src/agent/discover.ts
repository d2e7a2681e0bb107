/**
 * Finds the node's kernel VFIO devices through sysfs: PCI functions bound to a vfio driver (vfio-pci
 * or a variant such as mlx5_vfio_pci), and mediated devices (/sys/bus/mdev/devices/<uuid>: vGPUs,
 * mtty), each with its iommufd cdev (vfio-dev/vfioN) or its IOMMU group. Mediated vGPUs are how
 * KubeVirt sees a vGPU: an mdev is opened by its UUID in its group, or by its cdev.
 */
import { readdir, readlink } from 'node:fs/promises';
import { basename, join } from 'node:path';

export interface FoundDevice {
  /** A name that is also a Kubernetes object name: pci-0000-3b-00-1, mdev-<uuid>. */
  readonly name: string;
  readonly kind: 'pci' | 'mdev';
  /** The device's name in its group: the PCI address, or the mdev's UUID. */
  readonly address: string;
  /** The bound driver (vfio-pci, mlx5_vfio_pci); for an mdev, its type (mtty-2, nvidia-63). */
  readonly driver: string;
  readonly cdev?: string;
  readonly group?: string;
}

export function deviceNameOf(bdf: string): string {
  return `pci-${bdf.toLowerCase().replace(/[:.]/g, '-')}`;
}

export function mdevNameOf(uuid: string): string {
  return `mdev-${uuid.toLowerCase()}`;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export async function discoverVfioDevices(sysfs: string, dev: string): Promise<FoundDevice[]> {
  const found: FoundDevice[] = [];
  const pci = join(sysfs, 'bus/pci/devices');
  for (const bdf of (await list(pci)).sort()) {
    const driver = await link(join(pci, bdf, 'driver'));
    if (!driver || !driver.includes('vfio')) continue;
    found.push({ name: deviceNameOf(bdf), kind: 'pci', address: bdf, driver, ...(await access(join(pci, bdf), dev)) });
  }
  // Every mdev is a VFIO device: the mdev bus exists only for VFIO's mediated drivers.
  const mdevs = join(sysfs, 'bus/mdev/devices');
  for (const uuid of (await list(mdevs)).filter((u) => UUID.test(u)).sort()) {
    const type = await link(join(mdevs, uuid, 'mdev_type'));
    found.push({ name: mdevNameOf(uuid), kind: 'mdev', address: uuid, driver: type ?? 'mdev', ...(await access(join(mdevs, uuid), dev)) });
  }
  return found;
}

/**
 * The device's iommufd cdev and its group. Every VFIO device has a vfio-dev/vfioN entry in sysfs, but
 * only a kernel with VFIO_DEVICE_CDEV gives it a character device, which sysfs shows as its `dev`
 * attribute (Debian's 6.12 lists vfio-dev/vfio0 and has no /dev/vfio/devices).
 */
async function access(dir: string, dev: string): Promise<{ cdev?: string; group?: string }> {
  const entries = (await list(join(dir, 'vfio-dev'))).filter((c) => /^vfio\d+$/.test(c));
  let cdev: string | undefined;
  for (const c of entries) if ((await list(join(dir, 'vfio-dev', c))).includes('dev')) cdev ??= c;
  const group = await link(join(dir, 'iommu_group'));
  return { ...(cdev ? { cdev: join(dev, 'vfio/devices', cdev) } : {}), ...(group ? { group: join(dev, 'vfio', group) } : {}) };
}

async function list(dir: string): Promise<string[]> {
  return readdir(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return [] as string[];
    throw e;
  });
}

async function link(path: string): Promise<string | undefined> {
  try {
    return basename(await readlink(path));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
