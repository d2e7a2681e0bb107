/**
 * The Argo CD health checks (deploy/argocd), run by gopher-lua — the Lua Argo CD embeds — through a
 * small Go harness (test/argocd) that decodes objects the way Argo CD does. Every test input is a
 * DeviceMigration or DeviceNode our own schemas accept, so the scripts read real shapes.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import {
  deviceEvacuationSpec, deviceEvacuationStatus, deviceMigrationGroupSpec, deviceMigrationGroupStatus, deviceMigrationSpec, deviceMigrationStatus,
  deviceNodeSpec, deviceNodeStatus, deviceReleaseSpec, deviceReleaseStatus,
} from '../../src/api/types.js';
import { goBinary } from '../../src/local/apiserver.js';

const exec = promisify(execFile);
const HARNESS = fileURLToPath(new URL('../argocd/', import.meta.url));
const CHECKS = fileURLToPath(new URL('../../deploy/argocd/', import.meta.url));

async function runChecks(dir: string): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await exec(goBinary(), ['run', '.', dir], { cwd: HARNESS, env: { ...process.env, GOFLAGS: '-mod=mod' } });
    return { code: 0, out: stdout };
  } catch (e) {
    const err = e as { code?: number; stdout?: string; stderr?: string };
    return { code: err.code ?? -1, out: `${err.stdout ?? ''}${err.stderr ?? ''}` };
  }
}

it('every case of every health check gives the status and message it promises', async () => {
  const r = await runChecks(CHECKS);
  process.stdout.write(r.out);
  expect(r.code).toBe(0);
  expect(r.out.match(/^ok /gm)?.length).toBe(24);
}, 300_000);

it('a case whose expectation is wrong fails the run (the harness can fail)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'devmig-argocd-'));
  try {
    await cp(CHECKS, dir, { recursive: true });
    const f = join(dir, 'devmig.io', 'DeviceMigration', 'health_test.yaml');
    await writeFile(f, (await readFile(f, 'utf8')).replace('status: Healthy, message: "Moved to', 'status: Degraded, message: "Moved to'));
    const r = await runChecks(dir);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/FAIL .*succeeded.yaml: got "Healthy"/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}, 300_000);

it('the test inputs are objects devmig\'s schemas accept', async () => {
  for (const [kind, spec, status] of [
    ['DeviceMigration', deviceMigrationSpec, deviceMigrationStatus], ['DeviceNode', deviceNodeSpec, deviceNodeStatus],
    ['DeviceEvacuation', deviceEvacuationSpec, deviceEvacuationStatus], ['DeviceMigrationGroup', deviceMigrationGroupSpec, deviceMigrationGroupStatus],
    ['DeviceRelease', deviceReleaseSpec, deviceReleaseStatus],
  ] as const) {
    const dir = join(CHECKS, 'devmig.io', kind, 'testdata');
    for (const f of await readdir(dir)) {
      const o = parse(await readFile(join(dir, f), 'utf8')) as { kind: string; spec: unknown; status?: unknown };
      expect(o.kind).toBe(kind);
      expect(spec.safeParse(o.spec).error).toBeUndefined();
      if (o.status !== undefined) expect(status.safeParse(o.status).error).toBeUndefined();
    }
  }
});
