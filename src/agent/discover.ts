/**
 * Finds the node's kernel VFIO devices through sysfs: PCI functions bound to a vfio driver (vfio-pci
 * or a variant such as mlx5_vfio_pci), with their iommufd cdev (vfio-dev/vfioN) or their IOMMU group.
 */
import { readdir, readlink } from 'node:fs/promises';
import { basename, join } from 'node:path';

export interface FoundDevice {
  /** A name that is also a Kubernetes object name: pci-0000-3b-00-1 for 0000:3b:00.1. */
  readonly name: string;
  readonly bdf: string;
  readonly driver: string;
  readonly cdev?: string;
  readonly group?: string;
}

export function deviceNameOf(bdf: string): string {
  return `pci-${bdf.toLowerCase().replace(/[:.]/g, '-')}`;
}

export async function discoverVfioDevices(sysfs: string, dev: string): Promise<FoundDevice[]> {
  const root = join(sysfs, 'bus/pci/devices');
  const bdfs = await readdir(root).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return [] as string[];
    throw e;
  });
  const found: FoundDevice[] = [];
  for (const bdf of bdfs.sort()) {
    const driver = await link(join(root, bdf, 'driver'));
    if (!driver || !driver.includes('vfio')) continue;
    const cdevs = await readdir(join(root, bdf, 'vfio-dev')).catch(() => [] as string[]);
    const cdev = cdevs.find((c) => /^vfio\d+$/.test(c));
    const group = await link(join(root, bdf, 'iommu_group'));
    found.push({
      name: deviceNameOf(bdf), bdf, driver,
      ...(cdev ? { cdev: join(dev, 'vfio/devices', cdev) } : {}),
      ...(group ? { group: join(dev, 'vfio', group) } : {}),
    });
  }
  return found;
}

async function link(path: string): Promise<string | undefined> {
  try {
    return basename(await readlink(path));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
