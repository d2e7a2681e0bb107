/**
 * `kubectl devmig` (the kubectl-devmig executable): the user's view. migrate, status (with -w),
 * cancel, devices, evacuate. People get tables; -o json|yaml for scripts.
 */
import { Command, CommanderError } from 'commander';
import { stringify } from 'yaml';
import { API_VERSION } from '../api/names.js';
import { isFinalPhase } from '../api/types.js';
import { formatBytes } from '../api/quantity.js';
import { Kube, type DeviceEvacuation, type DeviceMigration, type DeviceRelease } from '../kube/kube.js';
import { occupancyCell } from '../api/occupancy.js';
import { CliError, jsonLine, processIo, table, type Io } from './output.js';

type Format = 'text' | 'json' | 'yaml';
const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

/** `k=v,k2=v2` as matchLabels; the only selector form a flag needs (YAML has the rest). */
function selector(s: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of s.split(',')) {
    const m = /^([^=]+)=([^=]*)$/.exec(part.trim());
    if (!m || !LABEL_KEY.test(m[1]!)) throw new CliError(`--to-selector "${s}": write key=value[,key=value], e.g. pool=gpu`, 2);
    out[m[1]!] = m[2]!;
  }
  return out;
}

function format(o?: string): Format {
  if (o === undefined) return 'text';
  if (o === 'json' || o === 'yaml') return o;
  throw new CliError(`-o ${o}: use -o json or -o yaml, or leave it out for a table`, 2);
}

function emit(io: Io, f: Format, value: unknown, text: () => string): void {
  if (f === 'json') io.out(jsonLine(value));
  else if (f === 'yaml') io.out(stringify(value));
  else io.out(text());
}

const ref = (s: string, what: string): { node: string; device?: string } => {
  const m = /^([a-z0-9][-a-z0-9.]*)(?:\/([a-z0-9][-a-z0-9.]*))?$/.exec(s);
  if (!m) throw new CliError(`${what} "${s}": write NODE or NODE/DEVICE, e.g. node-1/sim-0`);
  return { node: m[1]!, ...(m[2] ? { device: m[2] } : {}) };
};

export function buildPlugin(io: Io, kube: () => Kube): Command {
  const p = new Command('kubectl-devmig').description('devmig for kubectl: migrate VFIO device state between nodes')
    .option('--kubeconfig <file>', 'kubeconfig (default: $KUBECONFIG or ~/.kube/config)')
    .exitOverride().configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
  p.command('migrate').argument('<source>', 'NODE/DEVICE').requiredOption('--to <target>', 'NODE or NODE/DEVICE')
    .option('--strategy <s>', 'StopCopy, PreCopy or Auto', 'Auto').option('--name <name>', 'the DeviceMigration\'s name')
    .option('--wait', 'follow it until it ends').option('-o, --output <format>', 'json or yaml')
    .description('create a DeviceMigration').action(async (src: string, o: { to: string; strategy: string; name?: string; wait?: boolean; output?: string }) => {
      const f = format(o.output);
      const source = ref(src, 'source');
      if (!source.device) throw new CliError(`source "${src}": name the device too, e.g. ${src}/sim-0`);
      const name = o.name ?? `${source.node}-${source.device}-${Date.now().toString(36)}`;
      await kube().custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', fieldValidation: 'Strict',
        body: { apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name }, spec: { source, target: ref(o.to, '--to'), strategy: o.strategy } } });
      if (!o.wait) return emit(io, f, { name }, () => `devicemigration.devmig.io/${name} created`);
      const m = await follow(kube(), name, f === 'text' ? io : undefined);
      emit(io, f, m, () => '');
      if (m.status?.phase !== 'Succeeded') throw new CliError(`${name} ended ${m.status?.phase}: ${m.status?.failure?.message ?? ''}`);
    });
  p.command('status').argument('<name>').option('-w, --watch', 'follow it live').option('-o, --output <format>', 'json or yaml')
    .description('phase, progress, bytes, rate, downtime and the arcs of a DeviceMigration').action(async (name: string, o: { watch?: boolean; output?: string }) => {
      const f = format(o.output);
      const m = o.watch ? await follow(kube(), name, f === 'text' ? io : undefined) : await get(kube(), name);
      emit(io, f, m, () => describe(m));
    });
  p.command('cancel').argument('<name>').description('roll a DeviceMigration back (before its commit)').action(async (name: string) => {
    const k8s = await import('@kubernetes/client-node');
    await get(kube(), name);
    await kube().custom.patchClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', name, body: { spec: { cancel: true } } },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch));
    io.out(`devicemigration.devmig.io/${name} cancel requested`);
  });
  p.command('devices').argument('[node]').option('-o, --output <format>', 'json or yaml').description('the DeviceNode inventory: flags, states, who uses what')
    .action(async (node: string | undefined, o: { output?: string }) => {
      const f = format(o.output);
      const nodes = (await kube().listDeviceNodes()).filter((n) => !node || n.metadata.name === node);
      if (node && nodes.length === 0) throw new CliError(`no DeviceNode ${node}: is the devmig agent running on that node?`);
      const rows = nodes.flatMap((n) => (n.status?.devices ?? []).map((d) => ({ node: n.metadata.name, ...d })));
      emit(io, f, { devices: rows }, () => table(['NODE', 'DEVICE', 'KIND', 'FLAGS', 'STATE', 'OCCUPANCY', 'SINCE', 'MIGRATION'],
        rows.map((r) => [r.node, r.name, r.kind, r.flags.join(','), r.state, occupancyCell(r.occupancy), r.occupancy?.since.slice(0, 19) ?? '-',
          r.migration ? `${r.migration} (${r.role ?? '?'})` : '-'])));
    });
  p.command('release').argument('<device>', 'NODE/DEVICE')
    .option('--name <name>', 'the DeviceRelease\'s name (default: release-NODE-DEVICE-<time>)')
    .option('--wait', 'follow it until the device is free').option('-o, --output <format>', 'json or yaml')
    .description('create a DeviceRelease: the device\'s agent resets it (what it holds is gone) and it may receive another workload\'s state')
    .action(async (dev: string, o: { name?: string; wait?: boolean; output?: string }) => {
      const f = format(o.output);
      const target = ref(dev, 'device');
      if (!target.device) throw new CliError(`device "${dev}": name the device too, e.g. ${dev}/sim-0`, 2);
      const name = o.name ?? `release-${target.node}-${target.device}-${Date.now().toString(36)}`.slice(0, 253);
      const requestedBy = await whoAmI(kube());
      const r = await kube().createRelease({ metadata: { name }, spec: { node: target.node, device: target.device, ...(requestedBy ? { requestedBy } : {}) } });
      if (!o.wait) return emit(io, f, { name: r.metadata.name }, () => `devicerelease.devmig.io/${name} created`);
      const done = await followRelease(kube(), name, f === 'text' ? io : undefined);
      emit(io, f, done, () => '');
      if (done.status?.phase !== 'Released') throw new CliError(`${name} ended ${done.status?.phase}: ${done.status?.failure?.message ?? ''}`);
    });
  p.command('evacuate').argument('<node>', 'the node to move every in-use device off')
    .option('--to-selector <labels>', 'only onto nodes with these labels, k=v[,k=v]')
    .option('--max-parallel <n>', 'migrations at once', '2').option('--strategy <s>', 'StopCopy, PreCopy or Auto', 'Auto')
    .option('--name <name>', 'the DeviceEvacuation\'s name (default: evacuate-NODE)')
    .option('--wait', 'follow it until it ends').option('-o, --output <format>', 'json or yaml')
    .description('create a DeviceEvacuation: a migration for each in-use device of NODE, a few at a time')
    .action(async (node: string, o: { toSelector?: string; maxParallel: string; strategy: string; name?: string; wait?: boolean; output?: string }) => {
      const f = format(o.output);
      if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(node)) throw new CliError(`node "${node}": not a node name (lower-case letters, digits, - and .)`, 2);
      const maxParallel = Number(o.maxParallel);
      if (!Number.isInteger(maxParallel) || maxParallel < 1 || maxParallel > 64) throw new CliError(`--max-parallel ${o.maxParallel}: a whole number from 1 to 64`, 2);
      const name = o.name ?? `evacuate-${node}`;
      const spec = { node, maxParallel, strategy: o.strategy, ...(o.toSelector ? { targetNodeSelector: { matchLabels: selector(o.toSelector) } } : {}) };
      try {
        await kube().custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'deviceevacuations', fieldValidation: 'Strict',
          body: { apiVersion: API_VERSION, kind: 'DeviceEvacuation', metadata: { name }, spec } });
      } catch (e) {
        if ((e as { code?: number }).code === 409) throw new CliError(`deviceevacuation ${name} exists: follow it with kubectl get devac ${name} -w, or pick another --name`);
        throw e;
      }
      if (!o.wait) return emit(io, f, { name }, () => `deviceevacuation.devmig.io/${name} created`);
      const e = await followEvacuation(kube(), name, f === 'text' ? io : undefined);
      emit(io, f, e, () => '');
      if (e.status?.phase !== 'Succeeded') throw new CliError(`${name} ended ${e.status?.phase}: ${e.status?.conditions?.find((c) => c.type === 'Ready')?.message ?? ''}`);
    });
  return p;
}

/** The user this kubeconfig authenticates as (SelfSubjectReview), for spec.requestedBy; unknown: left out. */
async function whoAmI(kube: Kube): Promise<string | undefined> {
  const k8s = await import('@kubernetes/client-node');
  try {
    const r = await kube.config.makeApiClient(k8s.AuthenticationV1Api).createSelfSubjectReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' } });
    return r.status?.userInfo?.username;
  } catch {
    return undefined;
  }
}

async function followRelease(kube: Kube, name: string, io: Io | undefined): Promise<DeviceRelease> {
  let last = '';
  for (;;) {
    const r = await kube.getRelease(name);
    if (!r) throw new CliError(`devicerelease ${name} was deleted while it was followed`);
    const ready = r.status?.conditions?.find((c) => c.type === 'Ready');
    const l = `${name}  ${r.spec.node}/${r.spec.device}  ${r.status?.phase ?? 'Pending'}${ready ? `  ${ready.message}` : ''}`;
    if (io && l !== last) io.out(l);
    last = l;
    if (r.status?.phase === 'Released' || r.status?.phase === 'Failed') return r;
    await new Promise((res) => setTimeout(res, 200));
  }
}

function describeEvacuation(e: DeviceEvacuation): string {
  const c = e.status?.counts;
  const head = `${e.metadata.name}  ${(e.status?.phase ?? 'Pending').padEnd(15)} ${c ? `${c.succeeded}/${c.total} moved, ${c.running} moving, ${c.failed} failed, ${c.waiting} waiting` : ''}`;
  const rows = (e.status?.devices ?? []).map((d) => [d.device, d.migration ?? '-', d.targetNode ? `${d.targetNode}/${d.targetDevice ?? '?'}` : '-', d.phase, d.reason ? `${d.reason}: ${d.message ?? ''}` : '']);
  return `${head}\n\n${table(['DEVICE', 'MIGRATION', 'TARGET', 'PHASE', 'WHY'], rows)}`;
}

async function followEvacuation(kube: Kube, name: string, io: Io | undefined): Promise<DeviceEvacuation> {
  let last = '';
  for (;;) {
    const e = await kube.getEvacuation(name);
    if (!e) throw new CliError(`deviceevacuation ${name} was deleted while it was followed`);
    const l = describeEvacuation(e);
    if (io && l !== last) io.out(l);
    last = l;
    if (e.status?.finishedAt) return e;
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function get(kube: Kube, name: string): Promise<DeviceMigration> {
  const m = await kube.getMigration(name);
  if (!m) throw new CliError(`no DeviceMigration ${name} (kubectl get dmig lists them)`);
  return m;
}

function bar(pct: number): string {
  const n = Math.round(pct / 5);
  return `[${'#'.repeat(n)}${'.'.repeat(20 - n)}] ${pct}%`;
}

function line(m: DeviceMigration, rate?: number): string {
  const s = m.status;
  const pct = s?.phase === 'Succeeded' ? 100 : Number((s?.progress ?? '0').replace('%', '')) || 0;
  return `${m.metadata.name}  ${(s?.phase ?? 'Pending').padEnd(10)} ${bar(pct)}  ${formatBytes(s?.transfer?.bytes ?? 0)}` +
    (rate ? `  ${formatBytes(rate)}/s` : '') + (s?.downtimeMs !== undefined ? `  downtime ${s.downtimeMs} ms` : '');
}

function describe(m: DeviceMigration): string {
  const s = m.status;
  const arcs = table(['DEVICE', 'FROM', 'TO', 'STARTED', 'MS', 'RESULT', 'ERRNO'],
    (s?.arcs ?? []).map((a) => [a.device, a.from, a.to, a.startedAt.slice(11, 23), String(a.durationMs), a.result, a.errno ?? '']));
  const why = s?.failure ? `\n${s.failure.reason}: ${s.failure.message}` : '';
  return `${line(m)}\n${m.spec.source.node}/${m.spec.source.device} -> ${m.spec.target.node}/${s?.targetDevice ?? m.spec.target.device ?? '?'}${why}\n\n${arcs}`;
}

async function follow(kube: Kube, name: string, io: Io | undefined): Promise<DeviceMigration> {
  let last = '';
  let prev: { at: number; bytes: number } | undefined;
  for (;;) {
    const m = await get(kube, name);
    const bytes = m.status?.transfer?.bytes ?? 0;
    const now = Date.now();
    const rate = prev && now > prev.at ? ((bytes - prev.bytes) * 1000) / (now - prev.at) : undefined;
    prev = { at: now, bytes };
    const l = line(m, rate && rate > 0 ? rate : undefined);
    if (io && l !== last) io.out(l);
    last = l;
    if (isFinalPhase(m.status?.phase)) {
      if (io) io.out(describe(m));
      return m;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function pluginMain(argv: string[], io: Io = processIo): Promise<number> {
  let kubeconfig: string | undefined;
  const program = buildPlugin(io, () => Kube.fromFile(kubeconfig));
  program.hook('preAction', (cmd) => { kubeconfig = cmd.optsWithGlobals<{ kubeconfig?: string }>().kubeconfig; });
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    const wantsJson = argv.includes('json');
    const msg = (e as Error).message;
    if (wantsJson) io.out(jsonLine({ error: msg }));
    else io.err(`error: ${msg}`);
    return e instanceof CliError ? e.exitCode : 1;
  }
}
