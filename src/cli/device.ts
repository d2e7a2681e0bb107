/** `devmig device`: a device's migration capabilities, as the agent will see them. */
import type { Command } from 'commander';
import { basename, dirname } from 'node:path';
import { formatBytes } from '../api/quantity.js';
import type { MigrationDevice } from '../vfio/device.js';
import type { KernelDeviceSpec } from '../vfio/kernel.js';
import { SimDevice } from '../vfio/sim/device.js';
import { flagNames } from '../vfio/uapi.js';
import { CliError, jsonLine, parseFormat, type Io } from './output.js';

interface OpenOpts { device?: string; bdf?: string; via?: string; sysfs?: string; libc?: string }
interface ProbeOpts extends OpenOpts { output?: string }

export function registerDevice(program: Command, io: Io): void {
  const device = program.command('device').description('VFIO devices: what they support and where they are');
  device.command('probe')
    .description('print a device\'s migration flags, current state and stop-copy size estimate')
    .argument('<device>', 'a PCI address or mdev UUID (found in sysfs), sim:DIR/NAME, /dev/vfio/devices/vfioN (iommufd cdev), or /dev/vfio/GROUP with --device')
    .option('--device <name>', 'the device\'s name in the group: a PCI address (0000:3b:00.1) or an mdev UUID (legacy group path)')
    .option('--bdf <address>', 'same as --device, for a PCI address')
    .option('--via <path>', 'for an address or UUID: cdev (iommufd) or group; default cdev where the kernel has one')
    .option('--sysfs <dir>', 'where sysfs is mounted', '/sys')
    .option('--libc <path>', 'C library to call ioctl through (tests load a double of the kernel here)')
    .option('-o, --output <format>', 'json for one JSON object')
    .action((target: string, opts: ProbeOpts) => probe(target, opts, io));
}

async function probe(target: string, opts: ProbeOpts, io: Io): Promise<void> {
  const format = parseFormat(opts.output);
  const dev = await openDevice(target, opts);
  try {
    const flags = await dev.probe();
    const state = await dev.getState();
    const stopCopyBytes = await dev.stopCopySize();
    const result = { device: target, flags: flagNames(flags), state, stopCopyBytes: Number(stopCopyBytes) };
    if (format === 'json') return io.out(jsonLine(result));
    io.out([
      `device     ${target}`,
      `flags      ${result.flags.join(', ')}`,
      `state      ${state}`,
      `stop-copy  ${formatBytes(result.stopCopyBytes)} (${result.stopCopyBytes} bytes, the driver's estimate)`,
    ].join('\n'));
  } finally {
    await dev.close();
  }
}

export async function openDevice(target: string, opts: OpenOpts): Promise<MigrationDevice> {
  if (target.startsWith('sim:')) {
    const path = target.slice('sim:'.length);
    if (!path.includes('/')) throw new CliError(`${target}: write a simulated device as sim:DIR/NAME, e.g. sim:/var/lib/devmig/sim/sim-0`);
    return SimDevice.open({ dir: dirname(path), name: basename(path) });
  }
  const { openKernelDevice } = await import('../vfio/kernel.js');
  const libc = opts.libc ? { libc: opts.libc } : {};
  const inGroup = opts.device ?? opts.bdf;
  if (opts.via && opts.via !== 'cdev' && opts.via !== 'group') throw new CliError(`--via ${opts.via}: give cdev or group`);
  if (target.startsWith('/dev/vfio/devices/')) return openKernelDevice({ cdev: target }, libc);
  if (target.startsWith('/dev/')) {
    if (!inGroup) throw new CliError(`${target}: a group needs --device ADDRESS (a PCI address or an mdev UUID)`);
    return openKernelDevice({ group: target, device: inGroup }, libc);
  }
  return openKernelDevice(await sysfsSpec(target, opts), libc);
}

/** A PCI address or an mdev UUID, looked up in sysfs: its cdev, or its group. */
async function sysfsSpec(target: string, opts: OpenOpts): Promise<KernelDeviceSpec> {
  const { discoverVfioDevices } = await import('../agent/discover.js');
  const found = (await discoverVfioDevices(opts.sysfs ?? '/sys', '/dev')).find((d) => d.address.toLowerCase() === target.toLowerCase() || d.name === target);
  if (!found) {
    throw new CliError(`${target}: no VFIO device with that address in ${opts.sysfs ?? '/sys'} (a PCI function bound to a vfio driver, or an mdev); ` +
      'give a PCI address, an mdev UUID, /dev/vfio/devices/vfioN, /dev/vfio/GROUP --device ADDRESS, or sim:DIR/NAME');
  }
  const via = opts.via ?? (found.cdev ? 'cdev' : 'group');
  if (via === 'cdev' && found.cdev) return { cdev: found.cdev };
  if (via === 'group' && found.group) return { group: found.group, device: found.address };
  throw new CliError(`${target}: it has no ${via === 'cdev' ? 'iommufd cdev (the kernel lacks VFIO_DEVICE_CDEV)' : 'IOMMU group'}; try --via ${via === 'cdev' ? 'group' : 'cdev'}`);
}
