/**
 * One holder at a time, as with a real VFIO device (a second open of a device in use fails EBUSY).
 * The lock file holds the holder's pid; a lock whose pid is gone is stale and taken over.
 */
import { open, readFile, rm } from 'node:fs/promises';
import { DeviceError } from '../device.js';

/** Locks this process holds: a second open from the same process is refused as well. */
const held = new Set<string>();

export async function acquireLock(path: string, device: string): Promise<void> {
  if (held.has(path)) throw new DeviceError('EBUSY', `${device}: already held open by this process`, device);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      held.add(path);
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number((await readFile(path, 'utf8').catch(() => '')).trim());
    if (holder > 0 && holder !== process.pid && alive(holder)) {
      throw new DeviceError('EBUSY', `${device}: held open by process ${holder}`, device);
    }
    await rm(path, { force: true });
  }
  throw new DeviceError('EBUSY', `${device}: could not take the device lock ${path}`, device);
}

export async function releaseLock(path: string): Promise<void> {
  if (!held.delete(path)) return;
  const holder = Number((await readFile(path, 'utf8').catch(() => '')).trim());
  if (holder === process.pid) await rm(path, { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
