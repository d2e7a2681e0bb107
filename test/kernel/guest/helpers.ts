/**
 * Helpers for the tests that run inside the guest (npm run test:kernel boots it): real mtty mdevs,
 * opened through the kernel backend a node uses, by either access path the kernel has.
 */
import { randomUUID } from 'node:crypto';
import { discoverVfioDevices } from '../../../src/agent/discover.js';
import type { ResumeStream, SaveStream, SetStateResult } from '../../../src/vfio/device.js';
import { openKernelDevice, type KernelDevice } from '../../../src/vfio/kernel.js';
import { createMdev, removeMdev, type MttyType } from '../../../src/local/guest/mtty.js';
export { readUntilPause } from '../../helpers/streams.js';

export type Via = 'cdev' | 'group';

/** Which kernel this guest booted (set by the test:kernel runner): debian (legacy path only) or cdev. */
export const guestKernel = process.env.DEVMIG_GUEST_KERNEL ?? '';
/** The access paths this kernel has: the Debian kernel has no IOMMUFD, the cdev kernel has both. */
export const paths: Via[] = guestKernel === 'cdev' ? ['cdev', 'group'] : ['group'];

if (!guestKernel) throw new Error('these tests run inside the guest: npm run test:kernel');

const made: string[] = [];
const opened: KernelDevice[] = [];

/** A new mdev of `type`; removed (with every device opened here) by cleanup(). */
export async function mdev(type: MttyType = 'mtty-2'): Promise<string> {
  const uuid = randomUUID();
  await createMdev(uuid, type);
  made.push(uuid);
  return uuid;
}

export async function open(uuid: string, via: Via): Promise<KernelDevice> {
  const found = (await discoverVfioDevices('/sys', '/dev')).find((d) => d.address === uuid);
  if (!found) throw new Error(`mdev ${uuid} not found in /sys/bus/mdev/devices`);
  if (via === 'cdev' && !found.cdev) throw new Error(`mdev ${uuid} has no cdev on this kernel`);
  const d = await openKernelDevice(via === 'cdev' ? { cdev: found.cdev! } : { group: found.group!, device: uuid });
  opened.push(d);
  return d;
}

export async function cleanup(): Promise<void> {
  for (const d of opened.splice(0)) await d.close();
  for (const u of made.splice(0)) await removeMdev(u);
}

export const arcList = (r: SetStateResult) => r.arcs.map((a) => `${a.from}>${a.to}${a.errno ? `!${a.errno}` : ''}`).join(',');

/** Reads a STOP_COPY save stream to its end (a PRE_COPY pause there is an error). */
export async function readAll(s: SaveStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = Buffer.alloc(4096);
    const n = await s.read(b);
    if (n === 'ENOMSG') throw new Error('PRE_COPY pause while reading a STOP_COPY stream');
    if (n === 0) return Buffer.concat(parts);
    parts.push(b.subarray(0, n));
  }
}

/** The device's whole STOP_COPY stream; the device is left in STOP. */
export async function save(d: KernelDevice): Promise<Buffer> {
  const r = await d.setState('STOP_COPY');
  if (r.error) throw r.error;
  const data = await readAll(r.stream as SaveStream);
  const stop = await d.setState('STOP');
  if (stop.error) throw stop.error;
  return data;
}

/** STOP -> RESUMING, writes `data`; returns the resume stream's write error, if any. */
export async function resume(d: KernelDevice, data: Buffer): Promise<{ r: SetStateResult; writeError?: unknown }> {
  const r = await d.setState('RESUMING');
  if (r.error) throw r.error;
  try {
    await (r.stream as ResumeStream).write(data);
    return { r };
  } catch (e) {
    return { r, writeError: e };
  }
}
