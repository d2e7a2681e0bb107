/**
 * The Dockerfile's rules that matter, checked without a Docker engine (none runs here, and Debian
 * has no hadolint): Node 24 like the project, multi-stage, nothing built or installed in the final
 * stage, non-root, exec-form entry point, no floating tags, a context without node_modules.
 */
import { readFile } from 'node:fs/promises';
import { repoRoot } from '../helpers/cli.js';

let text: string;
let stages: string[][];
beforeAll(async () => {
  text = await readFile(`${repoRoot}Dockerfile`, 'utf8');
  const lines = text.split('\n').filter((l) => l.trim() && !l.trim().startsWith('#'));
  stages = [];
  for (const l of lines) {
    if (/^FROM\s/i.test(l)) stages.push([]);
    stages.at(-1)?.push(l);
  }
});

it('builds in one stage and runs in another, both on Node 24 like package.json', async () => {
  const pkg = JSON.parse(await readFile(`${repoRoot}package.json`, 'utf8')) as { engines: { node: string }; devDependencies: { node: string } };
  expect(stages.length).toBeGreaterThanOrEqual(2);
  for (const s of stages) expect(s[0]).toMatch(/^FROM node:24[-.\w]*( AS \w+)?$/);
  expect(pkg.engines.node).toMatch(/^>=24 <25$/);
  expect(pkg.devDependencies.node).toMatch(/^24\./);
  expect(text).not.toMatch(/:latest\b/);
});

it('the final stage runs as a non-root user, installs and compiles nothing, and uses exec form', () => {
  const last = stages.at(-1)!.join('\n');
  expect(last).toMatch(/^USER 65532:65532$/m);
  expect(last).not.toMatch(/\b(apt-get|apk|npm (ci|install)|gcc|make|python)\b/);
  expect(last).toMatch(/^ENTRYPOINT \["node", "\/app\/bin\/devmig.js"\]$/m);
  expect(text).not.toMatch(/^ADD\s/m);
});

it('installs dependencies from the lockfile before copying sources (a cached layer)', () => {
  const build = stages[0]!.join('\n');
  expect(build.indexOf('COPY package.json package-lock.json')).toBeLessThan(build.indexOf('RUN npm ci'));
  expect(build.indexOf('RUN npm ci')).toBeLessThan(build.indexOf('COPY src'));
  expect(build).toMatch(/npm prune --omit=dev/);
});

it('keeps node_modules and build output out of the context', async () => {
  const ignore = (await readFile(`${repoRoot}.dockerignore`, 'utf8')).split('\n');
  expect(ignore).toEqual(expect.arrayContaining(['node_modules', 'dist', '.devmig']));
});
