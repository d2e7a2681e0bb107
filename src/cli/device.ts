/** `devmig device`: a device's migration capabilities, as the agent will see them. */
import type { Command } from 'commander';
import { basename, dirname } from 'node:path';
import { formatBytes } from '../api/quantity.js';
import type { MigrationDevice } from '../vfio/device.js';
import { SimDevice } from '../vfio/sim/device.js';
import { flagNames } from '../vfio/uapi.js';
import { CliError, jsonLine, parseFormat, type Io } from './output.js';

interface ProbeOpts { output?: string; bdf?: string; libc?: string }

export function registerDevice(program: Command, io: Io): void {
  const device = program.command('device').description('VFIO devices: what they support and where they are');
  device.command('probe')
    .description('print a device\'s migration flags, current state and stop-copy size estimate')
    .argument('<device>', 'sim:DIR/NAME for a simulated device, /dev/vfio/devices/vfioN (iommufd cdev), or /dev/vfio/GROUP with --bdf')
    .option('--bdf <address>', 'PCI address inside the group, e.g. 0000:3b:00.1 (legacy group path)')
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

export async function openDevice(target: string, opts: { bdf?: string; libc?: string }): Promise<MigrationDevice> {
  if (target.startsWith('sim:')) {
    const path = target.slice('sim:'.length);
    if (!path.includes('/')) throw new CliError(`${target}: write a simulated device as sim:DIR/NAME, e.g. sim:/var/lib/devmig/sim/sim-0`);
    return SimDevice.open({ dir: dirname(path), name: basename(path) });
  }
  const { openKernelDevice } = await import('../vfio/kernel.js');
  const libc = opts.libc ? { libc: opts.libc } : {};
  if (target.startsWith('/dev/vfio/devices/')) return openKernelDevice({ cdev: target }, libc);
  if (opts.bdf) return openKernelDevice({ group: target, bdf: opts.bdf }, libc);
  throw new CliError(`${target}: not a device path; use /dev/vfio/devices/vfioN, /dev/vfio/GROUP --bdf ADDRESS, or sim:DIR/NAME`);
}
