/**
 * mtty, Linux's sample VFIO migration driver (samples/vfio-mdev/mtty.c): an emulated serial card
 * exposed as mediated devices, with STOP_COPY|P2P|PRE_COPY. Here: making and removing its mdevs, and
 * the device-visible state a migration must carry, the UART scratch register (offset 7) of each
 * port, port N being BAR N.
 */
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { KernelDevice } from '../../vfio/kernel.js';

export type MttyType = 'mtty-1' | 'mtty-2';
export const UART_SCR = 7;

export function mttyPorts(type: MttyType): number {
  return type === 'mtty-1' ? 1 : 2;
}

/** Creates the mdev `uuid` of `type` under mtty's parent device; its group appears in /dev/vfio. */
export async function createMdev(uuid: string, type: MttyType = 'mtty-2', sysfs = '/sys'): Promise<void> {
  const types = join(sysfs, 'class/mdev_bus/mtty/mdev_supported_types');
  const available = await readdir(types).catch(() => [] as string[]);
  if (!available.includes(type)) {
    throw new Error(`mtty has no mdev type ${type} in ${types} (found: ${available.join(', ') || 'none'}); is the mtty module loaded?`);
  }
  await writeFile(join(types, type, 'create'), uuid);
}

export async function removeMdev(uuid: string, sysfs = '/sys'): Promise<void> {
  await writeFile(join(sysfs, 'bus/mdev/devices', uuid, 'remove'), '1').catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

/** Each port's scratch register, in port order. */
export function readScratch(dev: KernelDevice, ports: number): Buffer {
  return Buffer.concat(Array.from({ length: ports }, (_, port) => dev.readRegion(port, UART_SCR, 1)));
}

/** Writes one byte per port, in port order. */
export function writeScratch(dev: KernelDevice, bytes: Buffer): void {
  for (const [port, b] of bytes.entries()) dev.writeRegion(port, UART_SCR, Buffer.of(b));
}

/** A marker as the CLI takes it: one hex byte per port ("5aa5" for two ports). */
export function parseMarker(hex: string, ports: number): Buffer {
  if (!/^([0-9a-fA-F]{2})+$/.test(hex) || hex.length !== ports * 2) {
    throw new RangeError(`--set ${hex}: give ${ports} hex byte${ports > 1 ? 's' : ''} (one per port of the mtty device), e.g. ${'5a'.repeat(ports)}`);
  }
  return Buffer.from(hex, 'hex');
}
