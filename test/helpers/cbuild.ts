/** Compiles the C test sources with gcc into test/.build (gitignored), again only when they change. */
import { execFile } from 'node:child_process';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './cli.js';

const run = promisify(execFile);

export async function buildC(source: string, output: string, args: string[]): Promise<string> {
  const src = join(repoRoot, source);
  const out = join(repoRoot, 'test/.build', output);
  await mkdir(join(repoRoot, 'test/.build'), { recursive: true });
  const [s, o] = await Promise.all([stat(src), stat(out).catch(() => undefined)]);
  if (!o || o.mtimeMs < s.mtimeMs) await run('gcc', ['-O2', '-Wall', '-Werror', '-o', out, src, ...args]);
  return out;
}

export const buildDouble = () => buildC('test/cdouble/vfio_double.c', 'libvfio_double.so', ['-shared', '-fPIC', '-ldl', '-lpthread']);
