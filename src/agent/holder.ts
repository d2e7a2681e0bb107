/**
 * The fd holder: a small process apart from the agent that keeps the node's devices open, so that an
 * agent crash or upgrade does not close the last fd of a device mid-migration (the kernel would reset
 * it and its state would be lost). The agent finds a live holder by its pid file, or starts one.
 */
import { spawn } from 'node:child_process';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { alive } from '../vfio/sim/lock.js';
import { closeFds, takeFds } from './fdpass.js';

const PID_FILE = 'holder.pid';
const HELD_FILE = 'held.json';
const HANDOFF_FILE = 'handoff.json';
/**
 * How long a holder (a Node process) may take to start: 30 s, or DEVMIG_HOLDER_START_SECONDS. Under
 * QEMU's TCG on a busy machine a Node process takes longer than that (the --kernel environment).
 */
const HOLDER_START_MS = Number(process.env.DEVMIG_HOLDER_START_SECONDS ?? 30) * 1000 || 30_000;

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
  // A node process takes a few hundred ms to start, and seconds on a loaded machine: wait for it long
  // enough that a busy node does not fail its agent, but say so if it never comes.
  const deadline = Date.now() + HOLDER_START_MS;
  while (Date.now() < deadline) {
    if ((await findHolder(stateDir)) === pid) return pid;
    if (!alive(pid)) throw new Error(`the fd holder (pid ${pid}) exited at start; run \`devmig holder --state-dir ${stateDir}\` to see why`);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`the fd holder (pid ${pid}) did not come up in ${HOLDER_START_MS / 1000} s; see ${stateDir}`);
}

/** The holder another container started (holder: external): wait for its pid file, never start one. */
export async function awaitHolder(stateDir: string): Promise<number> {
  const deadline = Date.now() + HOLDER_START_MS;
  while (Date.now() < deadline) {
    const pid = await findHolder(stateDir);
    if (pid) return pid;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no fd holder runs for ${stateDir} after ${HOLDER_START_MS / 1000} s; with holder: external, run \`devmig holder --state-dir ${stateDir}\` beside the agent (the chart's holder container), sharing its process namespace`);
}

/** What the holder keeps: per device, its fds in the holder's numbering. */
export interface Held {
  readonly holder: number;
  readonly devices: Record<string, number[]>;
}

/** What the agent hands over: its pid and, per device, its fds in the agent's numbering. */
interface Handoff {
  readonly agent: number;
  readonly devices: Record<string, number[]>;
}

export async function readHeld(stateDir: string, holder: number): Promise<Held['devices']> {
  const text = await readFile(join(stateDir, HELD_FILE), 'utf8').catch(() => '');
  const held = text ? (JSON.parse(text) as Held) : undefined;
  return held?.holder === holder ? held.devices : {};
}

/** Asks the holder to keep copies of these device fds; resolves when it has them. */
export async function handOver(stateDir: string, holder: number, devices: Record<string, number[]>): Promise<void> {
  const handoff: Handoff = { agent: process.pid, devices };
  await writeFile(join(stateDir, HANDOFF_FILE), JSON.stringify(handoff));
  process.kill(holder, 'SIGUSR2');
  const deadline = Date.now() + HOLDER_START_MS;
  while (Date.now() < deadline) {
    const held = await readHeld(stateDir, holder);
    if (Object.keys(devices).every((d) => held[d])) return;
    if (!alive(holder)) throw new Error(`the fd holder (pid ${holder}) exited before it took the device fds; see ${stateDir}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`the fd holder (pid ${holder}) did not take the device fds in ${HOLDER_START_MS / 1000} s; see ${stateDir}`);
}

/** The holder's own main loop: publish the pid, take fds when asked, hold until told to let go. */
export async function runHolder(stateDir: string): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  const held: Held = { holder: process.pid, devices: {} };
  // Ready for SIGUSR2 before the pid file says we are here: the file is visible to an agent as soon
  // as the write lands, before this process runs on, and SIGUSR2's default action would end it.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  process.on('SIGUSR2', () => {
    take(stateDir, held).catch((e: unknown) => process.stderr.write(`devmig holder: ${(e as Error).message}\n`));
  });
  await writeFile(join(stateDir, HELD_FILE), JSON.stringify(held));
  await writeFile(join(stateDir, PID_FILE), String(process.pid));
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  clearInterval(keepAlive);
  const current = await readFile(join(stateDir, PID_FILE), 'utf8').catch(() => '');
  if (current.trim() === String(process.pid)) await rm(join(stateDir, PID_FILE), { force: true });
}

async function take(stateDir: string, held: { devices: Record<string, number[]> }): Promise<void> {
  const h = JSON.parse(await readFile(join(stateDir, HANDOFF_FILE), 'utf8')) as Handoff;
  for (const [device, fds] of Object.entries(h.devices)) {
    const copies = takeFds(h.agent, fds);
    if (held.devices[device]) closeFds(held.devices[device]);
    held.devices[device] = copies;
  }
  const tmp = join(stateDir, `${HELD_FILE}.tmp`);
  await writeFile(tmp, JSON.stringify({ holder: process.pid, devices: held.devices }));
  await rename(tmp, join(stateDir, HELD_FILE));
}

async function isHolder(pid: number): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.split('\0').includes('holder');
}
