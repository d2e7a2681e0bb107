/**
 * Who holds a simulated device open. A real VFIO device stays open (and keeps its state) for as long
 * as any process holds its fd, and is reset on last close. The lock file names that process: the
 * opener itself, or a holder process that outlives it (the agent's fd holder). A lock whose process is
 * gone was released the way a killed process releases its fds: by the kernel, with a reset.
 */
import { open, readFile, rm } from 'node:fs/promises';
import { DeviceError } from '../device.js';

/** Locks this process holds: a second open from the same process is refused as well. */
const held = new Set<string>();

export interface Hold {
  /** The device was found held by the given live holder: it never closed, so it was never reset. */
  readonly keptByHolder: boolean;
}

export async function acquireLock(path: string, device: string, holder?: number): Promise<Hold> {
  if (held.has(path)) throw new DeviceError('EBUSY', `${device}: already held open by this process`, device);
  const owner = holder ?? process.pid;
  for (let attempt = 0; attempt < 2; attempt++) {
    const current = await lockPid(path);
    if (current !== undefined && current === holder && alive(current)) {
      held.add(path);
      return { keptByHolder: true };
    }
    if (current !== undefined && current !== process.pid && alive(current)) {
      throw new DeviceError('EBUSY', `${device}: held open by process ${current}`, device);
    }
    if (current !== undefined) await rm(path, { force: true });
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(String(owner));
      await fh.close();
      held.add(path);
      return { keptByHolder: false };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  throw new DeviceError('EBUSY', `${device}: could not take the device lock ${path}`, device);
}

/** Lets go; a holder's lock stays, since the holder still has the device open. */
export async function releaseLock(path: string): Promise<void> {
  if (!held.delete(path)) return;
  if ((await lockPid(path)) === process.pid) await rm(path, { force: true });
}

async function lockPid(path: string): Promise<number | undefined> {
  const text = await readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return '';
    throw e;
  });
  const pid = Number(text.trim());
  return pid > 0 ? pid : undefined;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
