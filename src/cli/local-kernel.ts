/**
 * `devmig local marker` and `devmig local demo --kernel`: the local environment whose agents drive
 * real mtty devices in a QEMU guest. The marker is what the device shows its driver: mtty's UART
 * scratch register of each port, which a migration must carry to the target.
 */
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { API_VERSION } from '../api/names.js';
import { formatBytes } from '../api/quantity.js';
import type { DeviceMigration } from '../kube/kube.js';
import type { LocalOptions, LocalState } from '../local/env.js';
import type { GuestState } from '../local/kernel-env.js';
import { watch } from './local.js';
import { CliError, jsonLine, parseFormat, table, type Io } from './output.js';

interface Marker { node: string; device: string; ports: number; marker: string; state: string }

async function guestOf(dir: string): Promise<GuestState> {
  const s: LocalState | undefined = await (await import('../local/env.js')).readLocal(dir);
  if (!s?.guest) throw new CliError(`no --kernel environment in ${resolve(dir)}; run \`devmig local up --kernel\` first`);
  return s.guest;
}

export async function readMarker(g: GuestState, node: string, device: string, set?: string): Promise<Marker> {
  const { guestControl } = await import('../local/kernel-env.js');
  const q = new URLSearchParams({ node, device, ...(set !== undefined ? { set } : {}) });
  try {
    return (await guestControl(g, `/v1/marker?${q.toString()}`, set !== undefined ? 'PUT' : 'GET')) as unknown as Marker;
  } catch (e) {
    throw new CliError((e as Error).message);
  }
}

export async function marker(o: { node: string; device: string; set?: string; dir: string; output?: string }, io: Io): Promise<void> {
  const format = parseFormat(o.output);
  const m = await readMarker(await guestOf(o.dir), o.node, o.device, o.set);
  if (format === 'json') return io.out(jsonLine(m));
  io.out(`${m.node}/${m.device}: marker ${m.marker} (scratch register of ${m.ports} port${m.ports > 1 ? 's' : ''}), device ${m.state}`);
}

/** The arcs as the kernel answered them, and the marker on the target. */
async function report(g: GuestState, m: DeviceMigration, wrote: string, say: (t: string) => void) {
  const s = m.status!;
  say(table(['DEVICE', 'FROM', 'TO', 'RESULT', 'MS', 'ERRNO'], (s.arcs ?? []).map((a) => [a.device, a.from, a.to, a.result, String(a.durationMs), a.errno ?? ''])));
  const after = s.targetDevice ? await readMarker(g, 'node-2', s.targetDevice) : undefined;
  const intact = after?.marker === wrote;
  say(`\n${m.metadata.name}: ${s.phase}; moved ${formatBytes(s.transfer?.bytes ?? 0)}, downtime ${s.downtimeMs ?? '?'} ms`);
  say(`target node-2/${s.targetDevice ?? '?'}: marker ${after?.marker ?? '?'}, ${after?.state ?? '?'}: ${intact ? 'the marker is intact on the target' : 'DIFFERENT'}`);
  return { s, after, intact };
}

/** local up --kernel, a marker on node-1's first device, a migration to node-2, the marker on the target. */
export async function runKernelDemo(opts: LocalOptions, strategy: string, io: Io, output?: string): Promise<void> {
  const format = parseFormat(output);
  const say = (t: string) => { if (format === 'text') io.out(t); };
  const state = await (await import('../local/env.js')).localUp(opts, say);
  const g = state.guest!;
  const { Kube } = await import('../kube/kube.js');
  const kube = Kube.fromFile(state.kubeconfig);
  const source = g.devices['node-1']![0]!;
  const ports = source.type === 'mtty-1' ? 1 : 2;
  const wrote = await readMarker(g, 'node-1', source.name, randomBytes(ports).toString('hex'));
  say(`\nsource node-1/${source.name} (${source.type}, real mtty in the ${g.kernel} guest): marker ${wrote.marker}, ${wrote.state}`);
  const name = `demo-${Date.now().toString(36)}`;
  say(`applying DeviceMigration ${name}: node-1/${source.name} -> node-2 (strategy ${strategy})`);
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-1', device: source.name }, target: { node: 'node-2' }, strategy },
  } });
  const m = await watch(kube, name, say);
  const { s, after, intact } = await report(g, m, wrote.marker, say);
  say(`\nthe environment keeps running: KUBECONFIG=${join(resolve(opts.dir), 'kubeconfig')} kubectl get dmig; ` +
    '`devmig local marker --node node-2 --device ...`; stop it with `npm run local:down`');
  if (format === 'json') io.out(jsonLine({ name, phase: s.phase, bytes: s.transfer?.bytes, downtimeMs: s.downtimeMs, arcs: s.arcs?.length, marker: wrote.marker, target: after?.marker, intact }));
  if (s.phase !== 'Succeeded' || !intact) throw new CliError(`the demo migration ended ${s.phase}${s.failure ? `: ${s.failure.reason}: ${s.failure.message}` : ''}${s.phase === 'Succeeded' ? ': the marker differs on the target' : ''}`);
}
