/**
 * The local control plane's API server: a real kube-apiserver with embedded etcd, built from Go
 * modules (src/local/apiserver) the first time it is needed and cached by a hash of its sources.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { alive } from '../vfio/sim/lock.js';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const SOURCE = fileURLToPath(new URL('../../src/local/apiserver/', import.meta.url));

export function cacheDir(): string {
  return process.env.DEVMIG_CACHE ?? join(homedir(), '.cache', 'devmig');
}

/**
 * `go build` sets no version: the server would say v0.0.0-master, and clients that check it (helm's
 * kubeVersion) would refuse. Stamp the version go.mod pins, as Kubernetes' own build does.
 */
async function ldflags(): Promise<string> {
  const mod = await readFile(join(SOURCE, 'go.mod'), 'utf8');
  const v = /^\s*k8s\.io\/kubernetes (v(\d+)\.(\d+)\.\d+)\s*$/m.exec(mod);
  if (!v) throw new Error(`${SOURCE}go.mod does not require k8s.io/kubernetes vX.Y.Z`);
  const pkg = 'k8s.io/component-base/version';
  return `-X ${pkg}.gitVersion=${v[1]} -X ${pkg}.gitMajor=${v[2]} -X ${pkg}.gitMinor=${v[3]} -X ${pkg}.gitTreeState=clean`;
}

async function sourceHash(): Promise<string> {
  const h = createHash('sha256');
  h.update(await ldflags());
  for (const f of (await readdir(SOURCE)).filter((f) => /\.go$|^go\.(mod|sum)$/.test(f)).sort()) {
    h.update(f).update(await readFile(join(SOURCE, f)));
  }
  return h.digest('hex').slice(0, 16);
}

export function goBinary(): string {
  return process.env.GO ?? (process.env.PATH?.split(':').some((p) => p === '/usr/local/go/bin') ? 'go' : '/usr/local/go/bin/go');
}

/** The binary for the current sources, built (minutes on a cold Go cache) only when missing. */
export async function ensureApiserverBinary(log: (line: string) => void = () => undefined): Promise<string> {
  const bin = join(cacheDir(), `kube-apiserver-local-${await sourceHash()}`);
  return buildOnce(bin, log, async () => {
    log(`building kube-apiserver with embedded etcd from Go modules into ${bin} (the first build takes several minutes)`);
    const started = Date.now();
    await run(goBinary(), ['build', '-ldflags', await ldflags(), '-o', bin, '.'], SOURCE);
    log(`built in ${Math.round((Date.now() - started) / 1000)} s`);
  });
}

const exists = (path: string) => access(path).then(() => true, () => false);

/**
 * Makes `out` with `build` unless it exists, once across processes: jest's workers (and anything else
 * that starts at the same time on a cold cache) would otherwise each compile the same Go program,
 * every one of them slower for the others. The first takes `<out>.lock` (its pid inside); the others
 * wait for it, and take over a lock whose process is gone.
 */
export async function buildOnce(out: string, log: (line: string) => void, build: () => Promise<void>): Promise<string> {
  if (await exists(out)) return out;
  await mkdir(dirname(out), { recursive: true });
  const lock = `${out}.lock`;
  let said = false;
  for (;;) {
    try {
      await writeFile(lock, String(process.pid), { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const holder = Number(await readFile(lock, 'utf8').catch(() => '0'));
    if (holder > 0 && !alive(holder)) {
      await rm(lock, { force: true });
      continue;
    }
    if (!said) log(`waiting for process ${holder || '?'} to build ${out}`);
    said = true;
    await new Promise((r) => setTimeout(r, 1000));
    if (await exists(out)) return out;
  }
  try {
    if (!(await exists(out))) await build();
    return out;
  } finally {
    await rm(lock, { force: true });
  }
}

/**
 * Commands of the same Go module (its go.mod names kubelet, kube-controller-manager, kube-scheduler
 * and kubectl as tools), name -> package, built when missing into `<cache>/<name>-<hash of the
 * module's sources>`: one set of dependencies, one hash, so they always go together. One at a time:
 * they share most packages, which the first build leaves in the Go cache.
 */
export async function ensureModuleBinaries(pkgs: Record<string, string>, log: (line: string) => void = () => undefined): Promise<Record<string, string>> {
  const hash = await sourceHash();
  const bins: Record<string, string> = {};
  for (const [name, pkg] of Object.entries(pkgs)) {
    const bin = join(cacheDir(), `${name}-${hash}`);
    bins[name] = await buildOnce(bin, log, async () => {
      log(`building ${name} from Go modules into ${cacheDir()} (the first build takes minutes)`);
      const started = Date.now();
      // Under another name first: a build cut short leaves nothing that looks built.
      await run(goBinary(), ['build', '-ldflags', await ldflags(), '-o', `${bin}.${process.pid}.tmp`, pkg], SOURCE);
      await rename(`${bin}.${process.pid}.tmp`, bin);
      log(`built ${name} in ${Math.round((Date.now() - started) / 1000)} s`);
    });
  }
  return bins;
}

export function run(cmd: string, args: string[], cwd: string, env?: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'inherit', 'pipe'], ...(env ? { env } : {}) });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-4000); });
    child.on('error', (e) => reject(new Error(`${cmd} ${args.join(' ')}: ${e.message} (is Go installed? see README)`)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${err}`))));
  });
}

export interface RunningApiserver {
  readonly kubeconfig: string;
  readonly server: string;
  readonly pid: number;
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

export interface StartOptions {
  readonly dataDir: string;
  readonly port?: number;
  /** Keep running after this process exits (local up). */
  readonly detached?: boolean;
  readonly logFile?: string;
}

export async function startApiserver(opts: StartOptions, log?: (line: string) => void): Promise<RunningApiserver> {
  const bin = await ensureApiserverBinary(log);
  await mkdir(opts.dataDir, { recursive: true });
  const args = ['--data-dir', opts.dataDir, '--port', String(opts.port ?? 0)];
  // With a log file everything goes there, and readiness is read back from it: no pipe stays open
  // between us and a detached server, so this process can exit while it runs on.
  const logFd = opts.logFile ? openSync(opts.logFile, 'w') : undefined;
  const child = spawn(bin, args, { stdio: logFd === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', logFd, logFd], detached: opts.detached ?? false });
  if (logFd !== undefined) closeSync(logFd);
  const ready = await waitReady(child, opts.logFile);
  if (opts.detached) child.unref();
  return { ...ready, pid: child.pid!, process: child, stop: () => stopProcess(child) };
}

type Ready = { kubeconfig: string; server: string };

function parseReady(line: string): Ready | undefined {
  if (!line.startsWith('{')) return undefined;
  try {
    const msg = JSON.parse(line) as Partial<Ready> & { ready?: boolean };
    return msg.ready && msg.kubeconfig && msg.server ? { kubeconfig: msg.kubeconfig, server: msg.server } : undefined;
  } catch {
    return undefined;
  }
}

async function waitReady(child: ChildProcess, logFile: string | undefined): Promise<Ready> {
  let tail = '';
  let exited: number | null | undefined;
  child.once('exit', (code) => { exited = code; });
  let found: Ready | undefined;
  if (!logFile) {
    child.stderr?.on('data', (d: Buffer) => { tail = (tail + d.toString()).slice(-4000); });
    createInterface({ input: child.stdout! }).on('line', (l) => { found ??= parseReady(l); });
  }
  const deadline = Date.now() + 180_000;
  while (!found) {
    if (logFile) {
      const text = await readFile(logFile, 'utf8').catch(() => '');
      tail = text.slice(-4000);
      found = text.split('\n').map(parseReady).find((r) => r !== undefined);
      if (found) break;
    }
    if (exited !== undefined) throw new Error(`kube-apiserver exited (${exited}) before it was ready:\n${tail}`);
    if (Date.now() > deadline) throw new Error(`kube-apiserver not ready after 180 s:\n${tail}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return found;
}

export async function stopProcess(child: ChildProcess, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}
