/**
 * Boots a guest with QEMU: the host's root shared read-only (Node and the repository run inside as
 * they are), a run directory shared read-write, QEMU's user network with ports forwarded from the
 * host's loopback, and a script init.sh runs in a chroot into the host root. KVM where the CPU and
 * /dev/kvm allow it, TCG elsewhere (QEMU emulates every instruction: slower, but needs nothing).
 *
 * Only loopback on the host side: forwards listen on 127.x addresses, and the guest reaches the
 * host's loopback as 10.0.2.2, inside QEMU.
 */
import { spawn } from 'node:child_process';
import { closeSync, createWriteStream, openSync } from 'node:fs';
import { access, constants, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { GuestFiles } from './artifacts.js';

/**
 * The repository the guest runs, kept visible under the guest's own tmpfs (init.sh): a fresh clone
 * in /tmp, as a CI's may be, was hidden by the guest's /tmp ("can't cd to /tmp/...").
 */
const REPO = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');

export interface Forward {
  /** A loopback address on the host: 127.0.0.1, 127.0.3.2, ... */
  readonly host: string;
  readonly hostPort: number;
  readonly guestPort: number;
}

export interface BootOptions {
  readonly files: GuestFiles;
  /** The run's directory (absolute): shared read-write at the same path, holds the script and `exit`. */
  readonly out: string;
  /** The script to run, a path inside `out`. */
  readonly script: string;
  readonly memoryMiB?: number;
  readonly cpus?: number;
  readonly forwards?: readonly Forward[];
}

export async function accel(): Promise<string[]> {
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const kvm = /\b(vmx|svm)\b/.test(cpuinfo) && (await access('/dev/kvm', constants.W_OK).then(() => true, () => false));
  return kvm ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max'];
}

export async function qemuArgs(o: BootOptions): Promise<string[]> {
  for (const f of o.forwards ?? []) {
    if (!f.host.startsWith('127.')) throw new Error(`forward ${f.host}:${f.hostPort}: only loopback addresses (127.x.y.z) may listen on the host`);
  }
  const fwd = (o.forwards ?? []).map((f) => `,hostfwd=tcp:${f.host}:${f.hostPort}-:${f.guestPort}`).join('');
  return [
    ...(await accel()), '-m', String(o.memoryMiB ?? 2048), '-smp', String(o.cpus ?? 2),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio', '-monitor', 'none',
    '-kernel', o.files.image, '-initrd', o.files.initramfs,
    '-append', `console=ttyS0 panic=-1 loglevel=4 pci=noacpi devmig.run=${o.script} devmig.out=${o.out} devmig.keep=${REPO}`,
    '-virtfs', 'local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${o.out},mount_tag=out,security_model=none,multidevs=remap`,
    '-netdev', `user,id=n0,restrict=off${fwd}`, '-device', 'virtio-net-pci,netdev=n0',
  ];
}

export interface GuestResult {
  /** The script's exit code, or undefined when the guest ended without one (panic, timeout). */
  readonly code: number | undefined;
  readonly console: string;
  readonly timedOut: boolean;
}

/**
 * Boots, runs the script, waits for the guest to power off (or kills it after `timeoutMs`). The
 * console goes to `consoleLog` and, line by line, to `onLine`.
 */
export async function runGuest(o: BootOptions & { consoleLog: string; timeoutMs: number; onLine?: (line: string) => void }): Promise<GuestResult> {
  await rm(join(o.out, 'exit'), { force: true });
  const child = spawn('qemu-system-x86_64', await qemuArgs(o), { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = createWriteStream(o.consoleLog);
  let partial = '';
  const onData = (b: Buffer) => {
    log.write(b);
    partial += b.toString().replace(/\r/g, '');
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) o.onLine?.(l);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, o.timeoutMs);
  const exited = await new Promise<number | null>((resolve, reject) => {
    child.on('error', (e) => reject(new Error(`qemu-system-x86_64: ${e.message} (install qemu-system-x86)`)));
    child.on('close', resolve);
  });
  clearTimeout(timer);
  if (partial) o.onLine?.(partial);
  await new Promise<void>((r) => log.end(r));
  const text = await readFile(join(o.out, 'exit'), 'utf8').catch(() => '');
  const code = /^\d+$/.test(text.trim()) ? Number(text.trim()) : undefined;
  if (code === undefined && exited !== 0 && !timedOut) o.onLine?.(`qemu exited ${exited}`);
  return { code, console: o.consoleLog, timedOut };
}

/** Boots a guest that outlives this process (the local environment's); its console goes to `consoleLog`. */
export async function startGuest(o: BootOptions & { consoleLog: string }): Promise<number> {
  await rm(join(o.out, 'exit'), { force: true });
  const log = openSync(o.consoleLog, 'a');
  const child = spawn('qemu-system-x86_64', await qemuArgs(o), { detached: true, stdio: ['ignore', log, log] });
  closeSync(log);
  child.unref();
  if (!child.pid) throw new Error('could not start qemu-system-x86_64 (install qemu-system-x86)');
  return child.pid;
}
