/**
 * `npm run bench:control -- -o json`: the control plane's own overhead. On the local environment,
 * 20 DeviceMigrations of 0-byte simulated devices, one after another, each timed from create to a
 * final phase; the downtime is the one status recorded.
 */
import * as k8s from '@kubernetes/client-node';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { API_VERSION } from '../api/names.js';
import { isFinalPhase } from '../api/types.js';
import { Kube, type DeviceMigration } from '../kube/kube.js';
import { localDown, localUp } from '../local/env.js';

const RUNS = 20;

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { output: { type: 'string', short: 'o' }, runs: { type: 'string', default: String(RUNS) } } });
  const runs = Number(values.runs);
  const json = values.output === 'json';
  const say = (t: string) => { if (!json) process.stderr.write(`${t}\n`); };
  const dir = await mkdtemp(join(tmpdir(), 'devmig-bench-control-'));
  try {
    const env = await localUp({ dir, nodes: 2, devices: runs, stateSize: '0', loopbackPrefix: '127.0.6' }, say);
    const kube = Kube.fromFile(env.kubeconfig);
    const times: number[] = [];
    const downtimes: number[] = [];
    for (let i = 0; i < runs; i++) {
      const name = `bench-${i}`;
      // Followed by a watch, as kubectl wait does: polling would load the API server it measures.
      const { ended, stop } = await follow(kube, name);
      const started = performance.now();
      await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
        apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
        spec: { source: { node: 'node-1', device: `sim-${i}` }, target: { node: 'node-2', device: `sim-${i}` }, strategy: 'StopCopy' },
      } });
      const m = await ended.finally(stop);
      if (m.status?.phase !== 'Succeeded') throw new Error(`${name} ended ${m.status?.phase}: ${m.status?.failure?.message}`);
      times.push(performance.now() - started);
      downtimes.push(m.status.downtimeMs ?? NaN);
      say(`${name}: ${times.at(-1)!.toFixed(0)} ms, downtime ${downtimes.at(-1)} ms: ${inDowntime(m)}`);
    }
    const out = { runs, median_ms: round(pct(times, 50)), p90_ms: round(pct(times, 90)), downtime_median_ms: round(pct(downtimes, 50)) };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await localDown(dir, () => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}

/** A watch on one DeviceMigration, started before it exists: settles when it reaches a final phase. */
async function follow(kube: Kube, name: string): Promise<{ ended: Promise<DeviceMigration>; stop: () => void }> {
  let settle!: (m: DeviceMigration) => void;
  let fail!: (e: Error) => void;
  const ended = new Promise<DeviceMigration>((res, rej) => { settle = res; fail = rej; });
  const timer = setTimeout(() => fail(new Error(`${name} did not finish in 60 s`)), 60_000);
  const req = await new k8s.Watch(kube.config).watch(`/apis/devmig.io/v1alpha1/devicemigrations`, { fieldSelector: `metadata.name=${name}` },
    (_type: string, m: DeviceMigration) => { if (isFinalPhase(m.status?.phase)) settle(m); },
    (e: unknown) => { if (e) fail(e as Error); });
  return { ended, stop: () => { clearTimeout(timer); req.abort(); } };
}

/** Where the downtime went: each arc since the source began to stop, as +start..end ms. */
function inDowntime(m: DeviceMigration): string {
  const t0 = Date.parse(m.status?.stopCopyAt ?? '');
  return (m.status?.arcs ?? []).filter((a) => Date.parse(a.startedAt) >= t0).map((a) => {
    const at = Date.parse(a.startedAt) - t0;
    return `${a.device} ${a.from}>${a.to} +${at}..${at + a.durationMs}`;
  }).join(', ');
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN;
}
const round = (x: number) => Math.round(x * 10) / 10;

await main();
