/**
 * `npm run test:kernel`: the project's own jest tests against the real kernel.
 *
 * 1. For each guest kernel (Debian's 6.12.95 with mtty.ko: the legacy container/group path; our
 *    6.12.118 with IOMMUFD and VFIO_DEVICE_CDEV: both paths), build or take from the cache its boot
 *    files, boot it, and run test/kernel/guest inside it, against real mtty mdevs.
 * 2. On the host, test/kernel/local: `devmig local up --kernel` with the agents in a guest, and
 *    migrations through the operator.
 *
 * A guest's console is printed as it runs; on a failure its log is printed again in full.
 * Arguments: --kernel debian|cdev (one guest only), --only guest|local.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureGuest, GUEST_KERNELS, guestCache, type GuestKernel } from './artifacts.js';
import { runGuest } from './qemu.js';

const repo = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');
const GUEST_TIMEOUT_MS = 30 * 60_000;

interface Options { kernels: GuestKernel[]; guest: boolean; local: boolean }

function parseArgs(argv: string[]): Options {
  const o: Options = { kernels: [...GUEST_KERNELS], guest: true, local: true };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--kernel' && (value === 'debian' || value === 'cdev')) o.kernels = [value];
    else if (flag === '--only' && (value === 'guest' || value === 'local')) Object.assign(o, { guest: value === 'guest', local: value === 'local' });
    else throw new Error(`unknown argument ${flag ?? ''} ${value ?? ''}: use --kernel debian|cdev and --only guest|local`);
    i++;
  }
  return o;
}

const say = (l: string) => process.stdout.write(`${l}\n`);

/** Runs test/kernel/guest inside a guest booting `kernel`; true when jest passed. */
async function guestSuite(kernel: GuestKernel): Promise<boolean> {
  const started = Date.now();
  const files = await ensureGuest(kernel, say);
  say(`[${kernel}] boot files ready in ${secs(started)} s: ${files.image}`);
  await mkdir(join(guestCache(), 'runs'), { recursive: true });
  const out = await mkdtemp(join(guestCache(), 'runs', `test-${kernel}-`));
  const script = join(out, 'run.sh');
  await writeFile(script, [
    'set -e',
    `export HOME=/tmp/home PATH=${repo}/node_modules/.bin:/usr/local/bin:/usr/bin:/bin DEVMIG_GUEST_KERNEL=${kernel} DEVMIG_KERNEL_TESTS=guest CI=true TERM=dumb`,
    'mkdir -p "$HOME"',
    `cd ${repo}`,
    // One process: under TCG every extra Node (a jest worker) costs seconds to start.
    `exec node --experimental-vm-modules node_modules/jest/bin/jest.js --ci --runInBand --testTimeout 300000 --roots ${repo}/test/kernel/guest`,
  ].join('\n'));
  const booted = Date.now();
  const r = await runGuest({ files, out, script, consoleLog: join(out, 'console.log'), timeoutMs: GUEST_TIMEOUT_MS, onLine: (l) => say(`[${kernel}] ${l}`) });
  say(`[${kernel}] guest ran ${secs(booted)} s (boot, tests, power-off); exit ${r.code ?? 'none'}${r.timedOut ? ' (timed out)' : ''}`);
  if (r.code === 0) {
    await rm(out, { recursive: true, force: true });
    return true;
  }
  say(`[${kernel}] FAILED; the guest's console log (${r.console}):`);
  say(await readFile(r.console, 'utf8').catch(() => '(none)'));
  return false;
}

/**
 * test/kernel/local on the host: the local environment with its agents in a guest (each test waits
 * for its migration itself; under TCG on a loaded machine one took over a minute). Its directory is
 * kept (DEVMIG_KEEP) under a temporary dir of ours, so a failure prints the guest's console and the
 * agents' and controller's logs; a pass removes it.
 */
async function localSuite(): Promise<boolean> {
  await mkdir(join(guestCache(), 'runs'), { recursive: true });
  const tmp = await mkdtemp(join(guestCache(), 'runs', 'local-'));
  const ok = await new Promise<boolean>((resolve) => {
    const child = spawn(process.execPath, ['--experimental-vm-modules', join(repo, 'node_modules/jest/bin/jest.js'), '--ci', '--runInBand', '--testTimeout', '900000', '--roots', join(repo, 'test/kernel/local')], {
      cwd: repo, stdio: 'inherit', env: { ...process.env, DEVMIG_KERNEL_TESTS: 'local', DEVMIG_KEEP: '1', TMPDIR: tmp },
    });
    child.on('close', (code) => resolve(code === 0));
  });
  if (!ok) {
    for (const f of await logsUnder(tmp)) say(`=== ${f} (last 200 lines)\n${(await readFile(f, 'utf8')).split('\n').slice(-200).join('\n')}`);
  }
  await rm(tmp, { recursive: true, force: true });
  return ok;
}

async function logsUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true }).catch(() => [] as string[]);
  return entries.filter((f) => f.endsWith('.log')).sort().map((f) => join(dir, f));
}

const secs = (since: number) => Math.round((Date.now() - since) / 1000);

async function main(): Promise<number> {
  const o = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const failed: string[] = [];
  if (o.guest) for (const k of o.kernels) if (!(await guestSuite(k))) failed.push(`guest ${k}`);
  if (o.local && !(await localSuite())) failed.push('local --kernel');
  say(`test:kernel ${failed.length ? `FAILED (${failed.join(', ')})` : 'passed'} in ${secs(started)} s`);
  return failed.length ? 1 : 0;
}

main().then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`test:kernel: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
