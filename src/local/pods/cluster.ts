/**
 * `devmig local up --pods`: devmig as real pods on this machine. The control plane runs on the host
 * (our kube-apiserver with etcd, kube-controller-manager, kube-scheduler); each node is a containerd
 * and a kubelet; the image is built from the repo's Dockerfile and imported into every containerd;
 * then `helm install` of charts/devmig with simulated devices on a hostPath this environment knows.
 * Needs root on a machine you can change: it adds bridges, iptables rules and cgroups, and turns on
 * ip_forward (`local down` takes all of it back).
 */
import { AppsV1Api } from '@kubernetes/client-node';
import { chown, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Kube } from '../../kube/kube.js';
import { startApiserver } from '../apiserver.js';
import { CHART, helm } from '../helm.js';
import { alive } from '../../vfio/sim/lock.js';
import { ensurePodsBinaries, type PodsBinaries } from './binaries.js';
import { ensureImages, importImages, type Images } from './images.js';
import {
  AGENT_UID, DEVICE_ROOT, LIB_ROOT, logDir, NAMESPACE, OWNER_FILE, podsNode, RELEASE, RUN_ROOT, SIM_RESOURCE, statePath, WRITTEN_ANYWAY, type PodsNode,
} from './layout.js';
import { addBridge, addRules, ipForward, setIpForward } from './network.js';
import { makeCgroups, openPodResources, startContainerd, startKubelet } from './node.js';
import { daemon, exists, sh, waitFor } from './sh.js';

export interface PodsOptions {
  readonly dir: string;
  readonly nodes: number;
  readonly devices: number;
  readonly stateSize: string;
  /** Controller replicas (leader election with more than one). */
  readonly controllerReplicas?: number;
}

export interface PodsState {
  readonly dir: string;
  readonly kubeconfig: string;
  readonly options: PodsOptions;
  readonly server?: string;
  readonly nodes: Array<{ name: string; simDir: string; socket: string }>;
  /** Processes on the host, by what they are. */
  readonly pids: Record<string, number>;
  /** ip_forward before `up` turned it on. */
  readonly ipForwardBefore?: string;
  /** Of the paths kubelet, containerd and CNI write anyway, those that did not exist before `up`. */
  readonly created: string[];
  readonly image?: { name: string; tag: string; size: string };
  readonly tools?: Pick<PodsBinaries, 'kubectl' | 'crictl' | 'helm'>;
  /** Seconds each stage of `up` took, for the record. */
  readonly seconds: Record<string, number>;
  readonly ready?: boolean;
}

export async function readPods(dir: string): Promise<PodsState | undefined> {
  try {
    return JSON.parse(await readFile(statePath(dir), 'utf8')) as PodsState;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

/** The directory of the environment that owns this machine's pods environment, if one is up. */
export async function podsOwner(): Promise<string | undefined> {
  return (await readFile(OWNER_FILE, 'utf8').catch(() => '')).trim() || undefined;
}

export async function podsUp(o: PodsOptions, say: (t: string) => void): Promise<PodsState> {
  const dir = resolve(o.dir);
  await preflight(dir);
  const existing = await readPods(dir);
  if (existing?.ready && existing.pids['kube-apiserver'] && alive(existing.pids['kube-apiserver'])) {
    say(`already up in ${dir}; run \`devmig local down\` first to start over`);
    return existing;
  }
  const started = Date.now();
  await mkdir(logDir(dir), { recursive: true });
  await mkdir(RUN_ROOT, { recursive: true });
  await writeFile(OWNER_FILE, dir);
  const created = [];
  for (const p of WRITTEN_ANYWAY) if (!(await exists(p))) created.push(p);
  let state: PodsState = { dir, kubeconfig: join(dir, 'kubeconfig'), options: o, nodes: [], pids: {}, created, seconds: {}, ipForwardBefore: await ipForward() };
  const save = async (patch: Partial<PodsState>) => {
    state = { ...state, ...patch, pids: { ...state.pids, ...patch.pids }, seconds: { ...state.seconds, ...patch.seconds } };
    await writeFile(statePath(dir), JSON.stringify(state, null, 2));
  };
  await save({});
  const timed = async <T>(stage: string, f: () => Promise<T>): Promise<T> => {
    const t0 = Date.now();
    const v = await f();
    await save({ seconds: { [stage]: Math.round((Date.now() - t0) / 100) / 10 } });
    return v;
  };

  const [bins, images] = await timed('build', () => Promise.all([ensurePodsBinaries(say), ensureImages(say)]));
  say(`image ${images.devmig.name}${images.devmig.cached ? ' (cached)' : ` built in ${Math.round(images.devmig.seconds)} s`}, ${images.devmig.size}`);
  await save({ image: { name: images.devmig.name, tag: images.devmig.tag, size: images.devmig.size }, tools: { kubectl: bins.kubectl, crictl: bins.crictl, helm: bins.helm } });

  const api = await timed('control-plane', () => startControlPlane(dir, bins, save, say));
  const nodes = Array.from({ length: o.nodes }, (_, i) => podsNode(i + 1));
  await save({ nodes: nodes.map((n) => ({ name: n.name, simDir: n.simDir, socket: n.socket })) });
  await timed('nodes', () => startNodes(dir, nodes, bins, images, api, save, say));
  await timed('install', () => install(dir, o, nodes, images, say));
  await save({ ready: true, seconds: { total: Math.round((Date.now() - started) / 100) / 10 } });
  say(`ready in ${Math.round((Date.now() - started) / 1000)} s: export KUBECONFIG=${state.kubeconfig}; kubectl get pods -n ${NAMESPACE}`);
  return state;
}

async function preflight(dir: string): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new Error('devmig local up --pods needs root: it runs containerd and kubelets and adds bridges, iptables rules and cgroups (use a machine you can change)');
  }
  const missing = [];
  for (const [tool, pkg] of [['containerd', 'containerd'], ['runc', 'runc'], ['ctr', 'containerd'], ['buildah', 'buildah'], ['iptables', 'iptables'],
    ['ip', 'iproute2'], ['debootstrap', 'debootstrap'], ['gcc', 'gcc'], ['/usr/lib/cni/bridge', 'containernetworking-plugins']] as const) {
    const found = tool.startsWith('/') ? await exists(tool) : await sh('sh', ['-c', `command -v ${tool}`]).then(() => true, () => false);
    if (!found) missing.push(pkg);
  }
  if (missing.length) throw new Error(`devmig local up --pods needs ${[...new Set(missing)].join(', ')}: apt-get install ${[...new Set(missing)].join(' ')}`);
  const owner = await podsOwner();
  if (owner && owner !== dir && (await readPods(owner))) {
    throw new Error(`a pods environment of ${owner} is up on this machine (one at a time: its bridges and addresses are fixed); run \`devmig local down --dir ${owner}\` first`);
  }
}

type Save = (patch: Partial<PodsState>) => Promise<void>;
interface ControlPlane { kubeconfig: string; pki: string; port: number }

async function startControlPlane(dir: string, bins: PodsBinaries, save: Save, say: (t: string) => void): Promise<ControlPlane> {
  say('starting kube-apiserver with embedded etcd');
  const dataDir = join(dir, 'apiserver');
  const api = await startApiserver({ dataDir, detached: true, logFile: join(logDir(dir), 'apiserver.log') }, say);
  await save({ pids: { 'kube-apiserver': api.pid }, server: api.server });
  await copyFile(api.kubeconfig, join(dir, 'kubeconfig'));
  const pki = join(dataDir, 'pki');
  const kc = api.kubeconfig;
  const kcm = daemon(bins.controllerManager, [
    '--kubeconfig', kc, '--authentication-kubeconfig', kc, '--authorization-kubeconfig', kc, '--secure-port', '0', '--leader-elect=false',
    '--root-ca-file', join(pki, 'ca.crt'), '--service-account-private-key-file', join(pki, 'sa.key'),
    '--cluster-signing-cert-file', join(pki, 'ca.crt'), '--cluster-signing-key-file', join(pki, 'ca.key'), '--v', '1',
  ], join(logDir(dir), 'kube-controller-manager.log'));
  const scheduler = daemon(bins.scheduler, [
    '--kubeconfig', kc, '--authentication-kubeconfig', kc, '--authorization-kubeconfig', kc, '--secure-port', '0', '--leader-elect=false', '--v', '1',
  ], join(logDir(dir), 'kube-scheduler.log'));
  await save({ pids: { 'kube-controller-manager': kcm, 'kube-scheduler': scheduler } });
  const port = Number(new URL(api.server).port);
  // Pods reach the API server at the `kubernetes` Service's address; no kube-proxy runs, so DNAT it.
  await addRules(port);
  say(`control plane up: ${api.server}, kube-controller-manager and kube-scheduler`);
  return { kubeconfig: kc, pki, port };
}

async function startNodes(dir: string, nodes: PodsNode[], bins: PodsBinaries, images: Images, api: ControlPlane, save: Save, say: (t: string) => void) {
  await setIpForward('1');
  await Promise.all(nodes.map(async (n) => {
    await addBridge(n);
    await makeCgroups(n);
    const containerd = await startContainerd(dir, n);
    await save({ pids: { [`containerd ${n.name}`]: containerd } });
    await importImages(n.socket, [images.pause.archive, images.devmig.archive]);
    const kubelet = await startKubelet(dir, n, { kubelet: bins.kubelet, kubeconfig: api.kubeconfig, clientCaFile: join(api.pki, 'ca.crt') });
    await save({ pids: { [`kubelet ${n.name}`]: kubelet } });
  }));
  const kube = Kube.fromFile(api.kubeconfig);
  await waitFor(`nodes ${nodes.map((n) => n.name).join(', ')} Ready`, 180_000, async () => {
    const list = await kube.core.listNode();
    const ready = list.items.filter((n) => n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')).map((n) => n.metadata?.name);
    return nodes.every((n) => ready.includes(n.name)) ? true : undefined;
  }, 500);
  await Promise.all(nodes.map((n) => openPodResources(n)));
  say(`nodes ${nodes.map((n) => `${n.name} (${n.ip})`).join(', ')} Ready, with ${images.devmig.name} imported`);
}

/** The chart's values for this environment: the built image, never pulled; simulated devices on the node. */
export function installValues(o: PodsOptions, images: Pick<Images, 'devmig'>): string[] {
  return [
    '--set', `image.repository=${images.devmig.name.split(':')[0]}`, '--set', `image.tag=${images.devmig.tag}`, '--set', 'image.pullPolicy=Never',
    '--set', 'agent.kernel.enabled=false', '--set', 'agent.simulated.enabled=true', '--set', 'agent.simulated.onNode=true',
    '--set', `agent.simulated.devices=${o.devices}`, '--set', `agent.simulated.stateSize=${o.stateSize}`, '--set', `agent.stateDir=${DEVICE_ROOT}`,
    '--set', `controller.replicas=${o.controllerReplicas ?? 2}`,
    // The kubelet's PodResources, as on a real node: a device a pod was given (the test device plugin
    // advertises simulated devices as devmig.io/sim, by name) is never a target. Each node's kubelet
    // has its own root under LIB_ROOT.
    '--set', 'agent.podResources.withSimulated=true', '--set', `agent.podResources.dir=${LIB_ROOT}`,
    '--set-string', 'agent.podResources.subPathExpr=$(NODE_NAME)/kubelet/pod-resources', '--set-json', `agent.podResources.resources=${JSON.stringify({ [SIM_RESOURCE]: 'name' })}`,
  ];
}

async function install(dir: string, o: PodsOptions, nodes: PodsNode[], images: Images, say: (t: string) => void): Promise<void> {
  // The agents run as uid 65532: their directories on the node must be theirs before they start.
  for (const n of nodes) {
    await mkdir(n.agentState, { recursive: true });
    await chown(n.agentState, AGENT_UID, AGENT_UID);
  }
  const kubeconfig = join(dir, 'kubeconfig');
  await helm(['install', RELEASE, CHART, '--namespace', NAMESPACE, '--create-namespace', '--kubeconfig', kubeconfig, ...installValues(o, images)]);
  say(`helm install ${RELEASE} charts/devmig (namespace ${NAMESPACE}): image ${images.devmig.name}, pullPolicy Never, ${o.devices} simulated devices of ${o.stateSize} per node`);
  await waitReleaseReady(Kube.fromFile(kubeconfig), nodes.map((n) => n.name), o.controllerReplicas ?? 2);
  say(`the controller Deployment and the agent DaemonSet are ready; every node's DeviceNode is ready`);
}

/** Until the controller Deployment and the agent (and holder) DaemonSets are rolled out and ready, and the agents published ready DeviceNodes. */
export async function waitReleaseReady(kube: Kube, nodes: string[], replicas: number, timeoutMs = 300_000): Promise<void> {
  const apps = kube.config.makeApiClient(AppsV1Api);
  await waitFor(`the controller Deployment (${replicas} replicas) available`, timeoutMs, async () => {
    const d = await apps.readNamespacedDeployment({ name: `${RELEASE}-controller`, namespace: NAMESPACE });
    const s = d.status;
    return s?.observedGeneration === d.metadata?.generation && s?.updatedReplicas === replicas && s?.availableReplicas === replicas && !s?.unavailableReplicas ? true : undefined;
  }, 1000);
  await waitFor(`the agent DaemonSets rolled out on ${nodes.join(', ')}`, timeoutMs, async () => {
    const list = await apps.listNamespacedDaemonSet({ namespace: NAMESPACE, labelSelector: `app.kubernetes.io/instance=${RELEASE}` });
    const agent = list.items.find((d) => d.metadata?.labels?.['app.kubernetes.io/component'] === 'agent');
    const done = list.items.every((d) => {
      const s = d.status;
      const rolling = d.spec?.updateStrategy?.type !== 'OnDelete';
      return s?.observedGeneration === d.metadata?.generation && s?.desiredNumberScheduled === nodes.length && s?.numberReady === nodes.length
        && (!rolling || s?.updatedNumberScheduled === nodes.length);
    });
    return agent && done ? true : undefined;
  }, 1000);
  await waitFor(`ready DeviceNodes for ${nodes.join(', ')}`, timeoutMs, async () => {
    const dn = await kube.listDeviceNodes();
    return nodes.every((n) => dn.some((d) => d.metadata.name === n && d.status?.ready)) ? true : undefined;
  }, 500);
}
