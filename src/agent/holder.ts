/**
 * The fd holder: a small process apart from the agent that keeps the node's devices open, so that an
 * agent crash or upgrade does not close the last fd of a device mid-migration (the kernel would reset
 * it and its state would be lost). The agent finds a live holder by its pid file, or starts one.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { alive } from '../vfio/sim/lock.js';

const PID_FILE = 'holder.pid';

export async function findHolder(stateDir: string): Promise<number | undefined> {
  const text = await readFile(join(stateDir, PID_FILE), 'utf8').catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return '';
    throw e;
  });
  const pid = Number(text.trim());
  if (pid > 0 && alive(pid) && (await isHolder(pid))) return pid;
  return undefined;
}

/** Returns the pid of the node's holder, starting one (detached: it outlives us) if none is alive. */
export async function ensureHolder(stateDir: string, devmigBin: string): Promise<number> {
  const existing = await findHolder(stateDir);
  if (existing) return existing;
  await mkdir(stateDir, { recursive: true });
  const child = spawn(process.execPath, [devmigBin, 'holder', '--state-dir', stateDir], {
    detached: true,
    stdio: 'ignore',
  });
  child.unref();
  const pid = child.pid;
  if (!pid) throw new Error('could not start the fd holder process');
  for (let i = 0; i < 100; i++) {
    if ((await findHolder(stateDir)) === pid) return pid;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`the fd holder (pid ${pid}) did not come up; see ${stateDir}`);
}

/** The holder's own main loop: publish the pid, then hold until told to let go. */
export async function runHolder(stateDir: string): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  await writeFile(join(stateDir, PID_FILE), String(process.pid));
  const keepAlive = setInterval(() => undefined, 1 << 30);
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  clearInterval(keepAlive);
  const current = await readFile(join(stateDir, PID_FILE), 'utf8').catch(() => '');
  if (current.trim() === String(process.pid)) await rm(join(stateDir, PID_FILE), { force: true });
}

async function isHolder(pid: number): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.split('\0').includes('holder');
}
