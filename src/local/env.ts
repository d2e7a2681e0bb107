/**
 * `devmig local up|down`: a whole devmig on this machine. A real kube-apiserver (with etcd), Node
 * objects node-1..N, one agent process per node on its own loopback address with simulated devices,
 * and the controller, all under one directory (default .devmig/), recorded in local.json. The
 * simulated devices' state is device memory: it lives on tmpfs where there is one (deviceMemoryRoot),
 * and goes with `local down`, as a device's memory goes when its machine is off.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { parse } from 'yaml';
import { crdFiles, KINDS } from '../api/crd.js';
import { GROUP } from '../api/names.js';
import { AGENT_NODE_FLAGS } from '../agent/config.js';
import { Kube } from '../kube/kube.js';
import { alive } from '../vfio/sim/lock.js';
import { deviceMemoryRoot } from '../vfio/sim/memory.js';
import { startApiserver } from './apiserver.js';
import { applyObjects, readInstallIdentity, serviceAccountToken, tokenKubeconfig, type InstallIdentity } from './identity.js';
import type { GuestKernel } from './guest/artifacts.js';
import type { MttyType } from './guest/mtty.js';
import type { GuestState } from './kernel-env.js';

const devmigBin = fileURLToPath(new URL('../../bin/devmig.js', import.meta.url));

export interface LocalOptions {
  readonly dir: string;
  readonly nodes: number;
  readonly devices: number;
  readonly stateSize: string;
  /** Bytes per second each simulated workload rewrites while running (default 0). */
  readonly dirtyRate?: string;
  /** Agents listen on <prefix>.2, <prefix>.3, ... (loopback addresses). */
  readonly loopbackPrefix?: string;
  /** Per node, the endpoint its agent advertises instead of its own (a proxy a test puts in between). */
  readonly advertise?: Record<string, string>;
  /** The controller's evacuation.maxParallelTotal (default: the controller's, 8). */
  readonly evacuationMaxParallelTotal?: number;
  /**
   * Per node, the devices its agent's config declares spare (free to receive when first seen); a
   * node not named here declares all its simulated devices spare: they start empty. Others start
   * as FoundInUse, as a real node's devices would.
   */
  readonly spare?: Record<string, string[]>;
  /** Per node, its agent's podResources config (a kubelet's socket, or a test's PodResources server). */
  readonly podResources?: Record<string, Record<string, unknown>>;
  /** Agents on real mtty devices in a QEMU guest booting this kernel (src/local/kernel-env.ts). */
  readonly kernel?: GuestKernel;
  /** With `kernel`: the mtty types of each node's devices (default: `devices` mtty-2 each). */
  readonly kernelDeviceTypes?: Record<string, MttyType[]>;
  /** Agent settings over the defaults (src/agent/config.ts), for every node ("*") or one node by name. */
  readonly agentConfig?: Record<string, Record<string, unknown>>;
}

export interface LocalState {
  readonly dir: string;
  readonly kubeconfig: string;
  readonly apiserver: { pid: number; server: string };
  readonly agents: Array<{ node: string; pid: number; endpoint: string; simDir: string; stateDir: string }>;
  readonly controller: { pid: number; metrics: string; config: string };
  /** The simulated devices' memory, one directory per node (removed by `local down`). */
  readonly deviceMemory?: string;
  /** With --kernel: the guest the agents run in (their pid is 0 here: they are the guest's processes). */
  readonly guest?: GuestState;
}

const statePath = (dir: string) => join(dir, 'local.json');

export async function readLocal(dir: string): Promise<LocalState | undefined> {
  try {
    return JSON.parse(await readFile(statePath(resolve(dir)), 'utf8')) as LocalState;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

export async function localUp(o: LocalOptions, say: (t: string) => void): Promise<LocalState> {
  const dir = resolve(o.dir);
  const existing = await readLocal(dir);
  if (existing && alive(existing.apiserver.pid)) {
    say(`already up in ${dir} (kube-apiserver pid ${existing.apiserver.pid}); run \`devmig local down\` first to start over`);
    return existing;
  }
  await mkdir(join(dir, 'logs'), { recursive: true });
  say('starting kube-apiserver with embedded etcd');
  const api = await startApiserver({ dataDir: join(dir, 'apiserver'), detached: true, logFile: join(dir, 'logs', 'apiserver.log') }, say);
  const kubeconfig = join(dir, 'kubeconfig');
  await copyFile(api.kubeconfig, kubeconfig);
  const kube = Kube.fromFile(kubeconfig);
  await installCrds(kube);
  say(`installed CRDs ${KINDS.map((k) => `${k.plural}.${GROUP}`).join(', ')}`);
  const nodes = Array.from({ length: o.nodes }, (_, i) => `node-${i + 1}`);
  const hosts = nodes.map((_, i) => `${o.loopbackPrefix ?? '127.0.0'}.${i + 2}`);
  for (const [i, n] of nodes.entries()) await createNode(kube, n, hosts[i]!);
  say(`created Node objects ${nodes.join(', ')}`);
  // The controller and agents run as the chart's ServiceAccounts, on TokenRequest tokens, under the
  // chart's RBAC and admission policy: what works here works on a cluster with that chart.
  const id = await readInstallIdentity();
  await applyObjects(kube, id.objects);
  say(`applied the install's ServiceAccounts, RBAC and admission policy (namespace ${id.namespace})`);
  const controller = await startController(dir, kube, id, o.evacuationMaxParallelTotal);
  say(`started the controller (metrics ${controller.metrics}); it runs the PKI and signs the agents' certificates`);
  if (o.kernel) {
    const { startKernelAgents } = await import('./kernel-env.js');
    const k = await startKernelAgents({ dir, kube, id, nodes, hosts, kernel: o.kernel, devices: o.devices, controlPort: await freePort(), say,
      ...(o.kernelDeviceTypes ? { deviceTypes: o.kernelDeviceTypes } : {}) });
    const state: LocalState = { dir, kubeconfig, apiserver: { pid: api.pid, server: api.server }, agents: k.agents, controller, guest: k.guest };
    await writeFile(statePath(dir), JSON.stringify(state, null, 2));
    // Under TCG a guest boots and starts its Node processes in tens of seconds, minutes on a busy machine.
    await waitAgentsReady(kube, nodes, 900);
    say(`ready: export KUBECONFIG=${kubeconfig}`);
    return state;
  }
  const deviceMemory = join(await deviceMemoryRoot(), `devmig-local-${createHash('sha256').update(dir).digest('hex').slice(0, 12)}`);
  const agents = [];
  for (const [i, node] of nodes.entries()) agents.push(await startAgent(dir, kube, id, node, hosts[i]!, { ...o, simDir: join(deviceMemory, node) }));
  say(`started ${agents.length} agents with ${o.devices} simulated devices of ${o.stateSize} each (device memory in ${deviceMemory})`);
  const state: LocalState = { dir, kubeconfig, apiserver: { pid: api.pid, server: api.server }, agents, controller, deviceMemory };
  await writeFile(statePath(dir), JSON.stringify(state, null, 2));
  await waitAgentsReady(kube, nodes);
  say(`ready: export KUBECONFIG=${kubeconfig}`);
  return state;
}

export async function localDown(dir: string, say: (t: string) => void): Promise<void> {
  const s = await readLocal(dir);
  if (!s) {
    say(`nothing to stop in ${resolve(dir)}`);
    return;
  }
  if (s.guest) await (await import('./kernel-env.js')).stopGuest(s.guest, say);
  // An agent in the guest has no pid here (0): the number would be some host process's.
  const hostAgents = s.agents.filter((a) => a.pid > 0);
  const pids: Array<[string, number]> = [['controller', s.controller.pid], ...hostAgents.map((a) => [`agent ${a.node}`, a.pid] as [string, number])];
  for (const a of hostAgents) {
    const holder = Number((await readFile(join(a.stateDir, 'holder.pid'), 'utf8').catch(() => '')).trim());
    if (holder > 0) pids.push([`fd holder ${a.node}`, holder]);
  }
  pids.push(['kube-apiserver', s.apiserver.pid]);
  for (const [what, pid] of pids) {
    if (await stopPid(pid)) say(`stopped ${what} (pid ${pid})`);
  }
  if (s.deviceMemory) {
    await rm(s.deviceMemory, { recursive: true, force: true });
    say(`freed the simulated devices' memory (${s.deviceMemory})`);
  }
  // The devices' state is gone, so is every record of it: etcd (the DeviceMigrations, DeviceNodes)
  // and the agents' journals. The next `up` starts fresh, the devices spare and empty again.
  await rm(join(s.dir, 'apiserver'), { recursive: true, force: true });
  // (A guest's agents kept theirs on the guest's tmpfs: a path of the guest's, gone with it.)
  for (const a of hostAgents) await rm(a.stateDir, { recursive: true, force: true });
  say('removed the API server\'s data and the agents\' journals: the next `local up` starts fresh');
  await rm(statePath(s.dir), { force: true });
}

async function stopPid(pid: number): Promise<boolean> {
  if (!alive(pid)) return false;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 150 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  return true;
}

/**
 * Installs the CRDs as plain JSON (through the custom objects client): client-node's typed CRD model
 * would drop the schema's `default` and `x-kubernetes-validations` keys it does not spell that way.
 */
async function installCrds(kube: Kube): Promise<void> {
  const at = { group: 'apiextensions.k8s.io', version: 'v1', plural: 'customresourcedefinitions' };
  const crds = Object.values(crdFiles()).map((t) => parse(t) as { metadata: { name: string; resourceVersion?: string } });
  for (const body of crds) {
    try {
      await kube.custom.createClusterCustomObject({ ...at, body });
    } catch (e) {
      if ((e as { code?: number }).code !== 409) throw e;
      const cur = (await kube.custom.getClusterCustomObject({ ...at, name: body.metadata.name })) as typeof body;
      await kube.custom.replaceClusterCustomObject({ ...at, name: body.metadata.name,
        body: { ...body, metadata: { ...body.metadata, resourceVersion: cur.metadata.resourceVersion } } });
    }
  }
  for (const { metadata } of crds) {
    for (let i = 0; i < 100; i++) {
      const crd = (await kube.custom.getClusterCustomObject({ ...at, name: metadata.name })) as { status?: { conditions?: Array<{ type: string; status: string }> } };
      if (crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A Node object with the agent's address, as a kubelet would report it (the CSR approval checks it). */
async function createNode(kube: Kube, name: string, address: string): Promise<void> {
  try {
    await kube.core.createNode({ body: { metadata: { name, labels: { 'devmig.io/vfio': 'true', 'kubernetes.io/hostname': name } } } });
  } catch (e) {
    if ((e as { code?: number }).code !== 409) throw e;
  }
  await kube.core.patchNodeStatus({ name, body: { status: { addresses: [{ type: 'InternalIP', address }, { type: 'Hostname', address: name }] } } },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
}

async function logFile(dir: string, name: string): Promise<number> {
  return openSync(join(dir, 'logs', `${name}.log`), 'a');
}

function launch(args: string[], log: number, nodeFlags: readonly string[] = []): number {
  const child = spawn(process.execPath, [...nodeFlags, devmigBin, ...args], { detached: true, stdio: ['ignore', log, log] });
  closeSync(log); // the child has its own copy
  child.unref();
  if (!child.pid) throw new Error(`could not start devmig ${args.join(' ')}`);
  return child.pid;
}

async function startAgent(dir: string, kube: Kube, id: InstallIdentity, node: string, host: string, o: LocalOptions & { simDir: string }) {
  const home = join(dir, node);
  await mkdir(home, { recursive: true });
  const token = await serviceAccountToken(kube, id.namespace, id.agentServiceAccount, node);
  const kubeconfig = await tokenKubeconfig(kube, token, `${id.agentServiceAccount}@${node}`, join(home, 'kubeconfig'));
  const cfg = {
    node, listen: { host, port: 9443 }, stateDir: join(home, 'state'),
    ...(o.advertise?.[node] ? { advertise: o.advertise[node] } : {}),
    tls: { kubernetes: { namespace: id.namespace } },
    kube: { kubeconfig, heartbeatSeconds: 2 },
    ...(o.podResources?.[node] ? { podResources: o.podResources[node] } : {}),
    devices: { spare: o.spare?.[node] ?? ['*'], simulated: { dir: o.simDir, devices: Array.from({ length: o.devices }, (_, i) => ({ name: `sim-${i}`, stateSize: o.stateSize, ...(o.dirtyRate ? { dirtyRate: o.dirtyRate } : {}) })) } },
    ...o.agentConfig?.['*'], ...o.agentConfig?.[node],
  };
  await writeFile(join(home, 'agent.json'), JSON.stringify(cfg, null, 2));
  const pid = launch(['agent', '--config', join(home, 'agent.json')], await logFile(dir, `agent-${node}`), AGENT_NODE_FLAGS);
  return { node, pid, endpoint: o.advertise?.[node] ?? `https://${host}:9443`, simDir: o.simDir, stateDir: join(home, 'state') };
}

async function startController(dir: string, kube: Kube, id: InstallIdentity, evacuationMaxParallelTotal?: number) {
  const token = await serviceAccountToken(kube, id.namespace, id.controllerServiceAccount);
  const kubeconfig = await tokenKubeconfig(kube, token, id.controllerServiceAccount, join(dir, 'controller.kubeconfig'));
  const port = await freePort();
  const cfg = {
    kubeconfig, namespace: id.namespace, pki: { agentServiceAccount: id.agentServiceAccount },
    metrics: { host: '127.0.0.1', port }, leaderElection: { enabled: true, leaseSeconds: 15 },
    ...(evacuationMaxParallelTotal ? { evacuation: { maxParallelTotal: evacuationMaxParallelTotal } } : {}),
  };
  const config = join(dir, 'controller.json');
  await writeFile(config, JSON.stringify(cfg, null, 2));
  const pid = launch(['controller', '--config', config], await logFile(dir, 'controller'));
  return { pid, metrics: `http://127.0.0.1:${port}/metrics`, config };
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

async function waitAgentsReady(kube: Kube, nodes: string[], seconds = 60): Promise<void> {
  for (let i = 0; i < seconds * 10; i++) {
    // A CRD just established may answer 429 while its storage initializes: ask again.
    const dn = await kube.listDeviceNodes().catch((e: unknown) => {
      if ((e as { code?: number }).code === 429) return [];
      throw e;
    });
    if (nodes.every((n) => dn.some((d) => d.metadata.name === n && d.status?.ready))) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`agents did not publish ready DeviceNodes for ${nodes.join(', ')} in ${seconds} s; see the logs in the local directory`);
}
