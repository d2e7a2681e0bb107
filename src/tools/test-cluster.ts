/**
 * `npm run test:cluster`: devmig as real pods (src/local/pods), test/cluster's suite on it, and
 * everything torn down after. On any failure (of `up`, of a test, of teardown) every component's log
 * is printed: kubelets, containerds, the control plane, every container. DEVMIG_KEEP=1 leaves the
 * environment up for a look (then `devmig local down --dir <dir>`).
 */
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { podsUp } from '../local/pods/cluster.js';
import { podsDown } from '../local/pods/down.js';
import { podsLogs } from '../local/pods/logs.js';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const say = (t: string) => process.stdout.write(`[test:cluster] ${t}\n`);
/** The environment the suite runs on (it reads these back from pods.json). */
const CLUSTER = { nodes: 2, devices: 5, stateSize: '32Mi' };

function jest(dir: string): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--experimental-vm-modules', join(repo, 'node_modules/jest/bin/jest.js'), '--runInBand', 'test/cluster', ...process.argv.slice(2)],
      { cwd: repo, stdio: 'inherit', env: { ...process.env, DEVMIG_CLUSTER: dir } });
    child.on('close', (code) => resolve(code ?? 1));
  });
}

const dir = process.env.DEVMIG_PODS_DIR ?? join(await mkdtemp(join(tmpdir(), 'devmig-cluster-')), '.devmig');
let failed = false;
const started = Date.now();
try {
  await podsUp({ dir, ...CLUSTER }, say);
  say(`up in ${Math.round((Date.now() - started) / 1000)} s; running test/cluster`);
  const t0 = Date.now();
  failed = (await jest(dir)) !== 0;
  say(`test/cluster ${failed ? 'FAILED' : 'passed'} in ${Math.round((Date.now() - t0) / 1000)} s`);
} catch (e) {
  failed = true;
  say(`the pods environment did not come up: ${(e as Error).stack ?? String(e)}`);
}
if (failed) {
  say('every component\'s log follows');
  await podsLogs(dir, (t) => process.stdout.write(t));
}
if (process.env.DEVMIG_KEEP) {
  say(`kept: KUBECONFIG=${join(dir, 'kubeconfig')}; tear down with \`devmig local down --dir ${dir}\``);
} else {
  const t0 = Date.now();
  try {
    await podsDown(dir, say);
    say(`down in ${Math.round((Date.now() - t0) / 1000)} s`);
  } catch (e) {
    failed = true;
    say(`teardown failed: ${(e as Error).stack ?? String(e)}`);
  }
}
say(`${failed ? 'FAILED' : 'passed'} in ${Math.round((Date.now() - started) / 1000)} s`);
process.exit(failed ? 1 : 0);
