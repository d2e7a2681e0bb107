/**
 * `npm run bench:downtime -- -o json`: the same device migrated twice on the local environment, a
 * 512 MiB simulated device whose workload keeps dirtying its state: once StopCopy, once PreCopy.
 * Prints both downtimes as status recorded them, and their ratio (PreCopy / StopCopy).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { API_VERSION } from '../api/names.js';
import { Kube, type DeviceMigration } from '../kube/kube.js';
import { localDown, localUp } from '../local/env.js';
import { deviceMemoryRoot } from '../vfio/sim/memory.js';

async function migrate(kube: Kube, name: string, strategy: string, device: string): Promise<DeviceMigration> {
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-1', device }, target: { node: 'node-2', device }, strategy, limits: { maxDowntime: '100ms' } },
  } });
  for (;;) {
    const m = await kube.getMigration(name);
    const phase = m?.status?.phase;
    if (phase === 'Succeeded') return m!;
    if (phase === 'Failed' || phase === 'RolledBack') throw new Error(`${name} ended ${phase}: ${m?.status?.failure?.message}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { output: { type: 'string', short: 'o' }, size: { type: 'string', default: '512Mi' }, 'dirty-rate': { type: 'string', default: '20Mi' } } });
  const say = (t: string) => { if (values.output !== 'json') process.stderr.write(`${t}\n`); };
  const dir = await mkdtemp(join(await deviceMemoryRoot(), 'devmig-bench-downtime-'));
  try {
    const env = await localUp({ dir, nodes: 2, devices: 2, stateSize: values.size, dirtyRate: values['dirty-rate'], loopbackPrefix: '127.0.5' }, say);
    const kube = Kube.fromFile(env.kubeconfig);
    const stop = await migrate(kube, 'stopcopy', 'StopCopy', 'sim-0');
    say(`StopCopy: downtime ${stop.status?.downtimeMs} ms, ${stop.status?.transfer?.bytes} bytes`);
    const pre = await migrate(kube, 'precopy', 'PreCopy', 'sim-1');
    say(`PreCopy: downtime ${pre.status?.downtimeMs} ms, ${pre.status?.transfer?.bytes} bytes`);
    const s = stop.status!.downtimeMs!;
    const p = pre.status!.downtimeMs!;
    process.stdout.write(`${JSON.stringify({ stopcopy_downtime_ms: s, precopy_downtime_ms: p, ratio: Math.round((p / s) * 1000) / 1000, size: values.size, dirty_rate: values['dirty-rate'] })}\n`);
  } finally {
    await localDown(dir, () => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
