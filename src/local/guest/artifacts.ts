/**
 * The guest's boot files, built from Debian's packages and cached under the devmig cache directory
 * (${DEVMIG_CACHE:-~/.cache/devmig}/guest), each keyed by a hash of what it is built from (package
 * versions, the build script, the config fragment, the init script), so a change rebuilds and an
 * unchanged input is never built twice:
 *
 * - `debian`: Debian's 6.12.95 kernel (bookworm-backports) with its VFIO, mdev, 9p and virtio-net
 *   modules, and mtty.ko built out of tree from linux-source (build-mtty.sh). The legacy
 *   container/group path only: no Debian kernel enables IOMMUFD.
 * - `cdev`: a kernel built from trixie's linux-source-6.12 (6.12.118, which carries the fix for the
 *   STOP_COPY -> PRE_COPY loop) with tinyconfig + cdev.config: IOMMUFD, VFIO_DEVICE_CDEV, mtty built
 *   in (build-kernel.sh, about 10 minutes on 2 cores, once).
 * - an initramfs per kernel: busybox-static, init.sh and the modules.
 *
 * Packages come through apt with a private configuration (own sources list, lists, cache and an empty
 * status file, under the cache directory): the host's apt state is never touched, and nothing is
 * installed on the host. The archive addresses are the host's own apt sources.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, chmod, copyFile, mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir } from '../apiserver.js';

export const GUEST_SOURCE = fileURLToPath(new URL('../../../src/local/guest/', import.meta.url));

export type GuestKernel = 'debian' | 'cdev';
export const GUEST_KERNELS: readonly GuestKernel[] = ['debian', 'cdev'];

/** What each kernel is built from: exact versions, so the cache key names them. */
export const DEBIAN_KERNEL = {
  release: '6.12.95+deb12-amd64',
  version: '6.12.95-1~bpo12+1',
  suite: 'bookworm-backports',
  packages: ['linux-image-6.12.95+deb12-amd64-unsigned', 'linux-headers-6.12.95+deb12-amd64', 'linux-headers-6.12.95+deb12-common',
    'linux-kbuild-6.12.95+deb12', 'linux-source-6.12'],
  /** Loaded in this order by init.sh: VFIO and mtty, then the 9p host share, then virtio-net. */
  modules: ['vfio', 'vfio_iommu_type1', 'mdev', 'mtty', 'netfs', '9pnet', '9pnet_virtio', '9p', 'failover', 'net_failover', 'virtio_net'],
} as const;

export const CDEV_KERNEL = { source: 'linux-source-6.12', version: '6.12.118-1', suites: ['trixie', 'trixie-security'] } as const;

export interface GuestFiles {
  readonly kernel: GuestKernel;
  /** bzImage to boot. */
  readonly image: string;
  readonly initramfs: string;
  /** What the kernel says it is, for logs: "6.12.95+deb12-amd64". */
  readonly release: string;
}

export type Say = (line: string) => void;

export function guestCache(): string {
  return join(cacheDir(), 'guest');
}

/** The boot files for `kernel`, built when missing. */
export async function ensureGuest(kernel: GuestKernel, say: Say = () => undefined): Promise<GuestFiles> {
  return kernel === 'debian' ? ensureDebian(say) : ensureCdev(say);
}

/** Where a kernel's build lives in the cache, and its key (a hash of what it is built from). */
export async function kernelDir(kernel: GuestKernel): Promise<{ dir: string; key: string }> {
  if (kernel === 'debian') {
    const key = hash([DEBIAN_KERNEL, await readFile(join(GUEST_SOURCE, 'build-mtty.sh'))]);
    return { key, dir: join(guestCache(), `debian-${DEBIAN_KERNEL.release}-${key}`) };
  }
  const [script, fragment] = await Promise.all([readFile(join(GUEST_SOURCE, 'build-kernel.sh')), readFile(join(GUEST_SOURCE, 'cdev.config'))]);
  const key = hash([CDEV_KERNEL, script, fragment]);
  return { key, dir: join(guestCache(), `cdev-${CDEV_KERNEL.version}-${key}`) };
}

async function ensureDebian(say: Say): Promise<GuestFiles> {
  const { dir, key } = await kernelDir('debian');
  if (!(await exists(join(dir, 'done')))) {
    const started = Date.now();
    say(`building the Debian ${DEBIAN_KERNEL.release} guest (kernel, modules, mtty.ko) into ${dir}`);
    await rm(dir, { recursive: true, force: true });
    const debs = await download([DEBIAN_KERNEL.suite], DEBIAN_KERNEL.packages.map((p) => `${p}=${DEBIAN_KERNEL.version}`), join(dir, 'debs'), say);
    const shipped = DEBIAN_KERNEL.modules.filter((m) => m !== 'mtty'); // mtty.ko is built, the rest are Debian's
    await run('sh', [join(GUEST_SOURCE, 'build-mtty.sh'), debs, DEBIAN_KERNEL.release, dir, ...shipped]);
    await rm(debs, { recursive: true, force: true });
    await writeFile(join(dir, 'modules', 'order'), `${DEBIAN_KERNEL.modules.join('\n')}\n`);
    await writeFile(join(dir, 'done'), '');
    say(`built the Debian guest kernel in ${seconds(started)} s`);
  }
  const initramfs = await ensureInitramfs('debian', key, join(dir, 'modules'), say);
  return { kernel: 'debian', image: join(dir, 'vmlinuz'), initramfs, release: DEBIAN_KERNEL.release };
}

async function ensureCdev(say: Say): Promise<GuestFiles> {
  const { dir, key } = await kernelDir('cdev');
  if (!(await exists(join(dir, 'bzImage')))) {
    const started = Date.now();
    say(`building the iommufd/cdev guest kernel from ${CDEV_KERNEL.source} ${CDEV_KERNEL.version} into ${dir} (about 10 minutes on 2 cores, once)`);
    await rm(dir, { recursive: true, force: true });
    const debs = await download([...CDEV_KERNEL.suites], [`${CDEV_KERNEL.source}=${CDEV_KERNEL.version}`], join(dir, 'debs'), say);
    await run('sh', [join(GUEST_SOURCE, 'build-kernel.sh'), join(debs, (await readdir(debs)).find((f) => f.endsWith('.deb'))!), join(GUEST_SOURCE, 'cdev.config'), dir]);
    await rm(debs, { recursive: true, force: true });
    say(`built the cdev guest kernel in ${seconds(started)} s`);
  }
  const release = `${CDEV_KERNEL.version.replace(/-\d+$/, '')}-devmig-cdev`;
  const initramfs = await ensureInitramfs('cdev', key, undefined, say);
  return { kernel: 'cdev', image: join(dir, 'bzImage'), initramfs, release };
}

/** busybox-static, init.sh and the modules (if any), as a gzipped newc cpio. */
async function ensureInitramfs(kernel: GuestKernel, kernelKey: string, modules: string | undefined, say: Say): Promise<string> {
  const busybox = await findBusybox();
  const init = await readFile(join(GUEST_SOURCE, 'init.sh'));
  const key = hash([kernelKey, init, await readFile(busybox)]);
  const out = join(guestCache(), `initramfs-${kernel}-${key}.cpio.gz`);
  if (await exists(out)) return out;
  const root = `${out}.root`;
  await rm(root, { recursive: true, force: true });
  for (const d of ['bin', 'dev', 'proc', 'sys', 'modules', 'host']) await mkdir(join(root, d), { recursive: true });
  await copyFile(busybox, join(root, 'bin/busybox'));
  await symlink('busybox', join(root, 'bin/sh'));
  await writeFile(join(root, 'init'), init);
  await chmod(join(root, 'init'), 0o755);
  if (modules) for (const f of await readdir(modules)) await copyFile(join(modules, f), join(root, 'modules', f));
  await run('sh', ['-c', `cd "${root}" && find . | sort | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "${out}.tmp"`]);
  await rename(`${out}.tmp`, out);
  await rm(root, { recursive: true, force: true });
  say(`made the ${kernel} guest's initramfs ${out}`);
  return out;
}

async function findBusybox(): Promise<string> {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    if (!(await exists(p))) continue;
    // A dynamically linked busybox cannot run in the initramfs, which has no libc.
    const head = await readFile(p).then((b) => b.subarray(0, 4096));
    if (!head.includes(Buffer.from('ld-linux'))) return p;
  }
  throw new Error('no static busybox found: install busybox-static (apt-get install busybox-static)');
}

/**
 * Downloads exact package versions with apt, configured apart from the host's: own sources list,
 * lists, cache, and an empty dpkg status, all under `dir` (removed by the caller when done).
 */
async function download(suites: string[], packages: string[], dir: string, say: Say): Promise<string> {
  const etc = join(dir, 'apt');
  const debs = join(dir, 'files');
  for (const d of [join(etc, 'lists/partial'), join(etc, 'cache/archives/partial'), join(etc, 'parts'), debs]) await mkdir(d, { recursive: true });
  const { archive, security } = await debianArchives();
  const keyring = '/usr/share/keyrings/debian-archive-keyring.gpg';
  const lines = suites.map((s) => `deb [signed-by=${keyring}] ${s.endsWith('-security') ? security : archive} ${s} main`);
  await writeFile(join(etc, 'sources.list'), `${lines.join('\n')}\n`);
  await writeFile(join(etc, 'status'), '');
  // APT_CONFIG is read before anything else: the host's apt.conf.d (and its extra index targets) stay out.
  await writeFile(join(etc, 'apt.conf'), [
    `Dir::Etc::SourceList "${etc}/sources.list";`, `Dir::Etc::SourceParts "${etc}/parts";`, `Dir::Etc::Parts "${etc}/parts";`,
    `Dir::Etc::Preferences "${etc}/preferences";`, `Dir::Etc::PreferencesParts "${etc}/parts";`,
    `Dir::State::Lists "${etc}/lists";`, `Dir::State::Status "${etc}/status";`, `Dir::Cache "${etc}/cache";`,
    'Debug::NoLocking "true";', 'APT::Sandbox::User "root";', 'Acquire::Languages "none";',
  ].join('\n'));
  const env = { ...process.env, APT_CONFIG: join(etc, 'apt.conf') };
  const started = Date.now();
  await run('apt-get', ['-q', 'update'], { env });
  await run('apt-get', ['-q', 'download', ...packages], { env, cwd: debs });
  say(`downloaded ${packages.join(', ')} in ${seconds(started)} s`);
  return debs;
}

/**
 * Debian's archive and security archive as this machine's apt knows them (one-line and deb822
 * sources), so a mirror configured on the machine is used; DEVMIG_DEBIAN_ARCHIVE and
 * DEVMIG_DEBIAN_SECURITY override.
 */
export async function debianArchives(): Promise<{ archive: string; security: string }> {
  const uris: string[] = [];
  const files = ['/etc/apt/sources.list', ...(await readdir('/etc/apt/sources.list.d').catch(() => [] as string[])).map((f) => join('/etc/apt/sources.list.d', f))];
  for (const f of files) {
    const text = await readFile(f, 'utf8').catch(() => '');
    for (const m of text.matchAll(/^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)/gm)) uris.push(...m[1]!.split(/\s+/));
  }
  const archive = process.env.DEVMIG_DEBIAN_ARCHIVE ?? uris.find((u) => /\/debian\/?$/.test(u));
  const security = process.env.DEVMIG_DEBIAN_SECURITY ?? uris.find((u) => /\/debian-security\/?$/.test(u));
  if (!archive || !security) {
    throw new Error('cannot tell Debian\'s archive and security archive from /etc/apt (no .../debian and .../debian-security source); set DEVMIG_DEBIAN_ARCHIVE and DEVMIG_DEBIAN_SECURITY to their URLs');
  }
  return { archive: archive.replace(/\/$/, ''), security: security.replace(/\/$/, '') };
}

function hash(parts: unknown[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(Buffer.isBuffer(p) ? p : JSON.stringify(p)).update('\0');
  return h.digest('hex').slice(0, 12);
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false);
}

const seconds = (since: number) => Math.round((Date.now() - since) / 1000);

/** Runs a command; its output is kept and shown only when it fails. */
export function run(cmd: string, args: string[], o: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...o });
    let out = '';
    const keep = (d: Buffer) => { out = (out + d.toString()).slice(-8000); };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')} failed (exit ${code}):\n${out}`))));
  });
}
