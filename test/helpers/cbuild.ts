/**
 * Compiles the tests' C sources with gcc into test/.build (gitignored). The output's name carries a
 * hash of the source and the flags, so a changed source builds anew and an unchanged one is reused;
 * gcc writes to a temporary name that is renamed into place, so parallel test workers never load a
 * half-written file.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './cli.js';

const run = promisify(execFile);
const buildDir = join(repoRoot, 'test/.build');
const CFLAGS = ['-O2', '-g', '-Wall', '-Wextra', '-Werror'];

/** Builds `source` (relative to the repo) with extra gcc `args`; returns the output's path. */
export async function buildC(source: string, output: string, args: string[]): Promise<string> {
  const text = await readFile(join(repoRoot, source));
  const hash = createHash('sha256').update(text).update(JSON.stringify([CFLAGS, args])).digest('hex').slice(0, 12);
  const ext = extname(output);
  const out = join(buildDir, `${basename(output, ext)}-${hash}${ext}`);
  if (!(await exists(out))) await compile(source, out, args);
  await pruneOlder(basename(output, ext), ext, out);
  return out;
}

async function compile(source: string, out: string, args: string[]): Promise<void> {
  await mkdir(buildDir, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    await run('gcc', [...CFLAGS, '-o', tmp, join(repoRoot, source), ...args]);
    await rename(tmp, out);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Builds of earlier versions of the same source: nothing loads them any more. */
async function pruneOlder(base: string, ext: string, keep: string): Promise<void> {
  const stale = (await readdir(buildDir)).filter((f) => new RegExp(`^${base}-[0-9a-f]{12}${ext.replace('.', '\\.')}$`).test(f));
  await Promise.all(stale.map((f) => join(buildDir, f)).filter((f) => f !== keep).map((f) => rm(f, { force: true })));
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/** The C double of the kernel's VFIO interface (test/cdouble/vfio_double.c), as a shared library. */
export const buildDouble = (): Promise<string> =>
  buildC('test/cdouble/vfio_double.c', 'libvfio_double.so', ['-shared', '-fPIC', '-ldl', '-lpthread']);
