/** `devmig local`: the embedded local environment, and a migration to watch on it. */
import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { API_VERSION } from '../api/names.js';
import { formatBytes, parseQuantity } from '../api/quantity.js';
import { isFinalPhase } from '../api/types.js';
import type { DeviceMigration, Kube } from '../kube/kube.js';
import { simDigest } from '../vfio/sim/digest.js';
import { CliError, jsonLine, parseFormat, table, type Io } from './output.js';

interface UpOpts { dir: string; nodes: string; devices: string; stateSize: string; loopback: string; pods?: boolean; output?: string; kernel?: string | boolean }

export function registerLocal(program: Command, io: Io): void {
  const local = program.command('local').description('a local devmig: real kube-apiserver, agents with simulated devices, controller');
  const up = local.command('up').description('start it (builds the kube-apiserver on first use; idempotent)');
  addUpOptions(up).action((o: UpOpts) => up_(o, io));
  local.command('down').description('stop everything `local up` started and start the next one fresh: the simulated devices\' memory, '
    + 'the API server\'s data (every DeviceMigration) and the agents\' journals all go, together (idempotent)')
    .option('--dir <dir>', 'where the local environment lives', '.devmig')
    .action(async (o: { dir: string }) => localDown(o.dir, (t) => io.out(t)));
  const demo = local.command('demo').description('local up, then migrate node-1/sim-0 to node-2 and watch it, then check the digest');
  addUpOptions(demo).option('--strategy <s>', 'StopCopy, PreCopy or Auto', 'Auto')
    .action((o: UpOpts & { strategy: string }) => (o.kernel ? kernelCli().then((k) => k.runKernelDemo(upOptions(o), o.strategy, io, o.output)) : runDemo(o, io)));
  registerMarker(local, io);
}

/** --kernel's demo and the marker command, loaded when used. */
const kernelCli = () => import('./local-kernel.js');

function registerMarker(local: Command, io: Io): void {
  local.command('marker').description('read, and with --set write, a device\'s visible state in the --kernel environment: mtty\'s scratch register of each port')
    .requiredOption('--node <node>', 'the node, e.g. node-1')
    .requiredOption('--device <name>', 'the device, e.g. mdev-6d747479-0000-4000-8000-000001000000 (see kubectl get devicenodes)')
    .option('--set <hex>', 'one hex byte per port, e.g. 5aa5 for a two-port mtty')
    .option('--dir <dir>', 'where the local environment lives', '.devmig')
    .option('-o, --output <format>', 'json for one JSON object')
    .action(async (o: { node: string; device: string; set?: string; dir: string; output?: string }) => (await kernelCli()).marker(o, io));
}

/** The local environment and the Kubernetes client, loaded by the commands that use them (~50 MB of RSS). */
const env = () => import('../local/env.js');
/** The same environment as real pods (`--pods`). */
const pods = () => import('../local/pods/cli.js');

/** Down is one command for both: the environment in the directory goes, as pods or as processes. */
async function localDown(dir: string, say: (t: string) => void): Promise<void> {
  if (await (await pods()).podsDownIfUp(dir, say)) return;
  await (await env()).localDown(dir, say);
}

function addUpOptions(c: Command): Command {
  return c.option('--dir <dir>', 'where the local environment lives', '.devmig')
    .option('--nodes <n>', 'simulated nodes', '2')
    .option('--devices <m>', 'simulated devices per node', '2')
    .option('--state-size <quantity>', 'device state size', '64Mi')
    .option('--loopback <prefix>', 'agents listen on <prefix>.2, <prefix>.3, ...', '127.0.0')
    .option('--kernel [guest]', 'agents on real mtty devices in a QEMU guest booting Debian\'s kernel (debian, the default) or ours with iommufd (cdev)')
    .option('--pods', 'as real pods: containerd and a kubelet per node, the image built from the Dockerfile, the Helm chart (root; see README)')
    .option('-o, --output <format>', 'json for one JSON object');
}

async function up_(o: UpOpts, io: Io): Promise<void> {
  const format = parseFormat(o.output);
  const say = (t: string) => { if (format === 'text') io.out(t); };
  const state = o.pods ? await (await pods()).podsUpCli(upOptions(o), say) : await (await env()).localUp(upOptions(o), say);
  if (format === 'json') io.out(jsonLine(state));
}

export function upOptions(o: UpOpts) {
  const nodes = Number(o.nodes);
  const devices = Number(o.devices);
  if (!Number.isInteger(nodes) || nodes < 2 || nodes > 50) throw new CliError(`--nodes ${o.nodes}: give a whole number from 2 to 50`);
  if (!Number.isInteger(devices) || devices < 1 || devices > 64) throw new CliError(`--devices ${o.devices}: give a whole number from 1 to 64`);
  parseQuantity(o.stateSize, '--state-size');
  if (o.pods && nodes > 8) throw new CliError(`--nodes ${o.nodes}: the pods environment runs at most 8 nodes on one machine`);
  if (o.pods && o.kernel !== undefined && o.kernel !== false) throw new CliError('--pods and --kernel: choose one; the pods environment\'s agents have simulated devices');
  if (!/^127\.\d{1,3}\.\d{1,3}$/.test(o.loopback)) throw new CliError(`--loopback ${o.loopback}: give the first three octets of a loopback address, e.g. 127.0.0`);
  const kernel = guestKernel(o.kernel);
  return { dir: o.dir, nodes, devices, stateSize: o.stateSize, loopbackPrefix: o.loopback, ...(kernel ? { kernel } : {}) };
}

function guestKernel(flag: string | boolean | undefined): 'debian' | 'cdev' | undefined {
  if (flag === undefined || flag === false) return undefined;
  if (flag === true || flag === 'debian') return 'debian';
  if (flag === 'cdev') return 'cdev';
  throw new CliError(`--kernel ${flag}: give debian (Debian's 6.12 kernel, the legacy group path) or cdev (ours, with iommufd)`);
}

async function runDemo(o: UpOpts & { strategy: string }, io: Io): Promise<void> {
  const format = parseFormat(o.output);
  const say = (t: string) => { if (format === 'text') io.out(t); };
  const state = o.pods ? await (await pods()).podsUpCli(upOptions(o), say) : await (await env()).localUp(upOptions(o), say);
  const { Kube } = await import('../kube/kube.js');
  const kube = Kube.fromFile(state.kubeconfig);
  const src = state.agents[0]!;
  const before = await simDigest(src.simDir, 'sim-0');
  const name = `demo-${Date.now().toString(36)}`;
  say(`\nsource node-1/sim-0: ${formatBytes(before.bytes)}, sha256 ${before.sha256}`);
  say(`applying DeviceMigration ${name}: node-1/sim-0 -> node-2 (strategy ${o.strategy})`);
  await kube.custom.createClusterCustomObject({ group: 'devmig.io', version: 'v1alpha1', plural: 'devicemigrations', body: {
    apiVersion: API_VERSION, kind: 'DeviceMigration', metadata: { name },
    spec: { source: { node: 'node-1', device: 'sim-0' }, target: { node: 'node-2' }, strategy: o.strategy },
  } });
  const m = await watch(kube, name, say);
  const s = m.status!;
  say(table(['DEVICE', 'FROM', 'TO', 'RESULT', 'MS', 'ERRNO'], (s.arcs ?? []).map((a) => [a.device, a.from, a.to, a.result, String(a.durationMs), a.errno ?? ''])));
  const target = state.agents.find((a) => a.node === 'node-2')!;
  const after = s.targetDevice ? await simDigest(target.simDir, s.targetDevice) : undefined;
  const intact = after?.sha256 === before.sha256;
  say(`\n${name}: ${s.phase}; moved ${formatBytes(s.transfer?.bytes ?? 0)}, downtime ${s.downtimeMs ?? '?'} ms`);
  say(`target node-2/${s.targetDevice ?? '?'} sha256 ${after?.sha256 ?? '?'}: ${intact ? 'identical, the state moved intact' : 'DIFFERENT'}`);
  say(`\nthe environment keeps running: KUBECONFIG=${join(resolve(o.dir), 'kubeconfig')} kubectl get dmig; stop it with \`npm run local:down\``);
  if (format === 'json') io.out(jsonLine({ name, phase: s.phase, bytes: s.transfer?.bytes, downtimeMs: s.downtimeMs, arcs: s.arcs?.length, intact }));
  if (s.phase !== 'Succeeded' || !intact) throw new CliError(`the demo migration ended ${s.phase}${s.failure ? `: ${s.failure.reason}: ${s.failure.message}` : ''}`);
}

export async function watch(kube: Kube, name: string, say: (t: string) => void): Promise<DeviceMigration> {
  let last = '';
  const deadline = Date.now() + 300_000;
  while (Date.now() < deadline) {
    const m = await kube.getMigration(name);
    const s = m?.status;
    const line = `${s?.phase ?? 'Pending'}${s?.transfer ? ` ${formatBytes(s.transfer.bytes)}` : ''}${s?.failure ? ` (${s.failure.reason})` : ''}`;
    if (line !== last) say(`  ${new Date().toISOString().slice(11, 23)}  ${line}`);
    last = line;
    if (m && isFinalPhase(s?.phase)) return m;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new CliError(`${name} did not finish in 5 minutes; see ${'.devmig/logs'}`);
}

export async function localSimDir(dir: string, node: string): Promise<string> {
  const s = (await (await pods()).podsAgents(dir)) ?? (await (await env()).readLocal(dir));
  const a = s?.agents.find((x) => x.node === node);
  if (!a) throw new CliError(`no local node ${node} in ${resolve(dir)}; run \`devmig local up\` first`);
  return a.simDir;
}
