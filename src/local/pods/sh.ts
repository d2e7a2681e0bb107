/**
 * Running the host's tools (ip, iptables, buildah, ctr, crictl, ...) for the pods environment: a
 * failure names the command and ends with what it printed, so a one-off failure in CI says why.
 */
import { execFile, spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { access, constants, readFile } from 'node:fs/promises';

export interface ShOptions {
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly timeoutMs?: number;
}

export class ShError extends Error {
  override readonly name = 'ShError';
  constructor(readonly command: string, readonly code: number | string | null, readonly stderr: string) {
    super(`${command} failed (${code ?? 'killed'}):\n${stderr.trim().split('\n').slice(-25).join('\n')}`);
  }
}

/** Runs a command to its end; resolves with its stdout, rejects naming it with the tail of its output. */
export function sh(cmd: string, args: readonly string[], o: ShOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: o.cwd, env: o.env ?? process.env, maxBuffer: 256 << 20, timeout: o.timeoutMs ?? 0 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException & { code?: number | string };
      if (e.code === 'ENOENT') return reject(new ShError(`${cmd} ${args.join(' ')}`, 'not found', `${cmd} is not installed (see README: devmig as pods)`));
      reject(new ShError(`${cmd} ${args.join(' ')}`, e.code ?? null, `${stderr}\n${stdout}`));
    });
  });
}

/** For teardown: runs it, and says whether it worked instead of throwing. */
export async function shOk(cmd: string, args: readonly string[], o: ShOptions = {}): Promise<boolean> {
  return sh(cmd, args, o).then(() => true, () => false);
}

/** Starts a long-running process that outlives us (like `local up`'s), its output appended to a log file. */
export function daemon(cmd: string, args: readonly string[], logFile: string, env?: NodeJS.ProcessEnv): number {
  const log = openSync(logFile, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', log, log], env: env ?? process.env });
  closeSync(log);
  child.unref();
  if (!child.pid) throw new Error(`could not start ${cmd} ${args.join(' ')}`);
  return child.pid;
}

export async function exists(path: string): Promise<boolean> {
  return access(path, constants.F_OK).then(() => true, () => false);
}

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, intervalMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not after ${Math.round(timeoutMs / 1000)} s${last ? ` (last: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** Unmounts every mount point below the given roots, deepest first (a lazy unmount if one is busy). */
export async function unmountUnder(roots: string[]): Promise<number> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const points = info.split('\n').map((l) => l.split(' ')[4]).filter((p): p is string => Boolean(p))
    .map((p) => p.replace(/\\040/g, ' '))
    .filter((p) => roots.some((r) => p === r || p.startsWith(`${r}/`)));
  const unique = [...new Set(points)].sort((a, b) => b.length - a.length);
  for (const p of unique) if (!(await shOk('umount', [p]))) await shOk('umount', ['-l', p]);
  return unique.length;
}
