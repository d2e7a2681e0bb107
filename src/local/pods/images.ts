/**
 * The pods environment's images, without a registry: the repo's own Dockerfile built by buildah, on a
 * local stand-in for its base image, and a pause image for the sandboxes. Each is kept in devmig's
 * cache as an OCI archive named by a hash of what it is made from, so an unchanged image is never
 * built twice; `importImages` loads the archives into a node's containerd.
 *
 * The base, `node:24-bookworm-slim`, cannot be pulled here. Its stand-in is made the way the real one
 * is: Debian bookworm (debootstrap, minbase), the Node 24 binary (the `node` package this repo pins)
 * and npm (`npm pack`). Where this machine reaches npm's registry through an extra CA
 * (NODE_EXTRA_CA_CERTS), the stand-in carries that bundle, or `npm ci` in the build could not verify
 * the registry. The Dockerfile itself is built unchanged.
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir } from '../apiserver.js';
import { exists, sh, unmountUnder } from './sh.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const PAUSE_SOURCE = fileURLToPath(new URL('../../../src/local/pods/pause.c', import.meta.url));
/** The base image's name as the Dockerfile says it (buildah's short-name alias makes it docker.io/library/node). */
export const BASE_IMAGE = 'docker.io/library/node:24-bookworm-slim';
export const PAUSE_IMAGE = 'devmig.local/pause:3.10';
export const DEVMIG_REPOSITORY = 'devmig.local/devmig';
/** npm as the Node 24.9 release ships it. */
const NPM_VERSION = '11.6.0';
const DEBIAN_SUITE = 'bookworm';
const DEBIAN_MIRROR = process.env.DEVMIG_DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';
/** Changes to how the stand-in is made change this, and with it the stand-in's key. */
const STAND_IN_RECIPE = 1;

export interface BuiltImage {
  readonly name: string;
  readonly archive: string;
  /** True when it came from the cache. */
  readonly cached: boolean;
  readonly seconds: number;
}

export interface Images {
  readonly pause: BuiltImage;
  readonly base: BuiltImage;
  readonly devmig: BuiltImage & { readonly tag: string; readonly size: string };
}

const imagesDir = () => join(cacheDir(), 'images');
const storage = () => join(cacheDir(), 'buildah');
/** buildah with its own storage in devmig's cache (layers stay cached between builds). */
const buildah = (args: string[], cwd?: string) =>
  sh('buildah', ['--root', join(storage(), 'storage'), '--runroot', '/run/devmig-buildah', '--storage-driver', 'overlay', ...args], { ...(cwd ? { cwd } : {}) });

export async function ensureImages(log: (line: string) => void): Promise<Images> {
  await mkdir(imagesDir(), { recursive: true });
  const pause = await ensurePause(log);
  const base = await ensureBase(log);
  const devmig = await ensureDevmig(base, log);
  return { pause, base, devmig };
}

function hashOf(parts: Array<string | Buffer>): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex').slice(0, 16);
}

async function cachedArchive(name: string, key: string): Promise<string | undefined> {
  const archive = join(imagesDir(), `${name}-${key}.tar`);
  return (await exists(archive)) ? archive : undefined;
}

/** Writes the archive under a temporary name first: a build that dies leaves nothing that looks done. */
async function pushArchive(image: string, archive: string): Promise<void> {
  const tmp = `${archive}.${process.pid}.tmp`;
  await rm(tmp, { force: true });
  await buildah(['push', image, `oci-archive:${tmp}:${image}`]);
  await rename(tmp, archive);
}

async function ensurePause(log: (line: string) => void): Promise<BuiltImage> {
  const started = Date.now();
  const key = hashOf([await readFile(PAUSE_SOURCE)]);
  const hit = await cachedArchive('pause', key);
  if (hit) return { name: PAUSE_IMAGE, archive: hit, cached: true, seconds: 0 };
  log(`building the pause image ${PAUSE_IMAGE} (gcc, static)`);
  const work = await mkdtemp(join(cacheDir(), 'pause-'));
  try {
    await sh('gcc', ['-static', '-Os', '-Wall', '-o', join(work, 'pause'), PAUSE_SOURCE]);
    const ctr = (await buildah(['from', 'scratch'])).trim();
    try {
      await buildah(['copy', ctr, join(work, 'pause'), '/pause']);
      await buildah(['config', '--entrypoint', '["/pause"]', '--user', '65535:65535', ctr]);
      await buildah(['commit', '--quiet', ctr, PAUSE_IMAGE]);
    } finally {
      await buildah(['rm', ctr]).catch(() => undefined);
    }
    const archive = join(imagesDir(), `pause-${key}.tar`);
    await pushArchive(PAUSE_IMAGE, archive);
    return { name: PAUSE_IMAGE, archive, cached: false, seconds: (Date.now() - started) / 1000 };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The Node binary this repo runs on (the `node` devDependency), and the extra CA bundle, if any. */
async function standInInputs() {
  const nodeBin = join(REPO, 'node_modules', 'node', 'bin', 'node');
  if (!(await exists(nodeBin))) throw new Error(`${nodeBin} is missing: run \`npm ci\` first (the stand-in base takes Node from the repo's node package)`);
  const nodeVersion = (await sh(nodeBin, ['--version'])).trim();
  const ca = process.env.NODE_EXTRA_CA_CERTS;
  const caBundle = ca && (await exists(ca)) ? await readFile(ca) : undefined;
  const key = hashOf([String(STAND_IN_RECIPE), DEBIAN_SUITE, nodeVersion, NPM_VERSION, caBundle ?? '']);
  return { nodeBin, nodeVersion, caBundle, key };
}

/** Whether buildah's storage has the image, made from these inputs (its label says which). */
async function hasImage(name: string, label: [string, string]): Promise<boolean> {
  const out = await buildah(['inspect', '--type', 'image', '--format', `{{index .OCIv1.Config.Labels "${label[0]}"}}`, name]).catch(() => '');
  return out.trim() === label[1];
}

async function ensureBase(log: (line: string) => void): Promise<BuiltImage> {
  const started = Date.now();
  const inputs = await standInInputs();
  const label: [string, string] = ['io.devmig.stand-in', inputs.key];
  if (await hasImage(BASE_IMAGE, label)) return { name: BASE_IMAGE, archive: '', cached: true, seconds: 0 };
  log(`making a local stand-in for ${BASE_IMAGE}: Debian ${DEBIAN_SUITE} (debootstrap from ${DEBIAN_MIRROR}), Node ${inputs.nodeVersion}, npm ${NPM_VERSION}`);
  const work = await mkdtemp(join(cacheDir(), 'stand-in-'));
  const rootfs = join(work, 'rootfs');
  try {
    await sh('debootstrap', ['--variant=minbase', DEBIAN_SUITE, rootfs, DEBIAN_MIRROR]);
    // What the real slim image leaves out too: package lists and downloaded archives.
    await rm(join(rootfs, 'var/lib/apt/lists'), { recursive: true, force: true });
    await mkdir(join(rootfs, 'var/lib/apt/lists/partial'), { recursive: true });
    for (const f of await readdir(join(rootfs, 'var/cache/apt/archives')).catch(() => [])) {
      if (f.endsWith('.deb')) await rm(join(rootfs, 'var/cache/apt/archives', f), { force: true });
    }
    await addNode(rootfs, work, inputs);
    await commitRootfs(rootfs, inputs, label);
    return { name: BASE_IMAGE, archive: '', cached: false, seconds: (Date.now() - started) / 1000 };
  } finally {
    // debootstrap mounts /proc (and more) in the tree while it works; one that died leaves them.
    await unmountUnder([work]);
    await rm(work, { recursive: true, force: true });
  }
}

async function addNode(rootfs: string, work: string, inputs: Awaited<ReturnType<typeof standInInputs>>): Promise<void> {
  const bin = join(rootfs, 'usr/local/bin');
  const lib = join(rootfs, 'usr/local/lib/node_modules');
  await mkdir(bin, { recursive: true });
  await mkdir(join(lib, 'npm'), { recursive: true });
  await copyFile(inputs.nodeBin, join(bin, 'node'));
  const tarball = (await sh('npm', ['pack', `npm@${NPM_VERSION}`, '--pack-destination', work, '--silent'], { cwd: work })).trim().split('\n').at(-1)!;
  await sh('tar', ['-xzf', join(work, tarball), '-C', join(lib, 'npm'), '--strip-components=1']);
  await symlink('../lib/node_modules/npm/bin/npm-cli.js', join(bin, 'npm'));
  await symlink('../lib/node_modules/npm/bin/npx-cli.js', join(bin, 'npx'));
  if (inputs.caBundle) {
    await mkdir(join(rootfs, 'etc/ssl/certs'), { recursive: true });
    await writeFile(join(rootfs, 'etc/ssl/certs/devmig-extra-ca.crt'), inputs.caBundle);
  }
}

async function commitRootfs(rootfs: string, inputs: Awaited<ReturnType<typeof standInInputs>>, label: [string, string]): Promise<void> {
  const ctr = (await buildah(['from', 'scratch'])).trim();
  try {
    const mnt = (await buildah(['mount', ctr])).trim();
    // cp -a keeps owners, modes, links and device nodes as debootstrap made them.
    await sh('cp', ['-a', `${rootfs}/.`, `${mnt}/`]);
    await buildah(['umount', ctr]);
    const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', `NODE_VERSION=${inputs.nodeVersion.replace(/^v/, '')}`];
    if (inputs.caBundle) env.push('NODE_EXTRA_CA_CERTS=/etc/ssl/certs/devmig-extra-ca.crt');
    await buildah(['config', ...env.flatMap((e) => ['--env', e]), '--cmd', 'node', '--label', `${label[0]}=${label[1]}`, ctr]);
    await buildah(['commit', '--quiet', ctr, BASE_IMAGE]);
  } finally {
    await buildah(['rm', ctr]).catch(() => undefined);
  }
}

/** What the Dockerfile builds from: itself, .dockerignore, and every file it copies in. */
async function contextHash(baseKey: string): Promise<string> {
  const files = ['Dockerfile', '.dockerignore', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json'];
  for (const d of ['src', 'bin']) files.push(...(await walk(join(REPO, d))).map((f) => relative(REPO, f)));
  const parts: Array<string | Buffer> = [baseKey];
  for (const f of files.sort()) parts.push(f, await readFile(join(REPO, f)));
  return hashOf(parts);
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

async function ensureDevmig(base: BuiltImage, log: (line: string) => void): Promise<Images['devmig']> {
  const started = Date.now();
  const tag = await contextHash((await standInInputs()).key);
  const name = `${DEVMIG_REPOSITORY}:${tag}`;
  const hit = await cachedArchive('devmig', tag);
  if (hit) return { name, tag, archive: hit, cached: true, seconds: 0, size: await imageSize(name).catch(() => '?') };
  log(`building ${name} from the repo's Dockerfile (buildah bud, base ${base.name}${base.cached ? ', cached' : ''})`);
  await buildah(['bud', '--isolation', 'chroot', '--pull-never', '--layers', '--quiet', '-t', name, '-f', join(REPO, 'Dockerfile'), REPO], REPO);
  const archive = join(imagesDir(), `devmig-${tag}.tar`);
  await pushArchive(name, archive);
  await pruneOld(tag);
  return { name, tag, archive, cached: false, seconds: (Date.now() - started) / 1000, size: await imageSize(name) };
}

/** The image's size unpacked, as buildah (and `docker images`) print it, e.g. "368 MB". */
export async function imageSize(name: string): Promise<string> {
  return (await buildah(['images', '--format', '{{.Size}}', name])).trim();
}

/** Keeps the cache from growing with every source change: older devmig images and archives go. */
async function pruneOld(keep: string): Promise<void> {
  for (const f of await readdir(imagesDir())) {
    if (f.startsWith('devmig-') && f !== `devmig-${keep}.tar`) await rm(join(imagesDir(), f), { force: true });
  }
  const out = await buildah(['images', '--format', '{{.Name}}:{{.Tag}}', '--filter', `reference=${DEVMIG_REPOSITORY}`]).catch(() => '');
  for (const img of out.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (!img.endsWith(`:${keep}`)) await buildah(['rmi', img]).catch(() => undefined);
  }
}

/** Loads the archives into a node's containerd (namespace k8s.io, where the kubelet's CRI looks). */
export async function importImages(socket: string, archives: readonly string[]): Promise<void> {
  for (const a of archives) {
    await sh('ctr', ['--address', socket, '-n', 'k8s.io', 'images', 'import', a]);
  }
}
