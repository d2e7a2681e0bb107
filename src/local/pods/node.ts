/**
 * One node of the pods environment: its own containerd (root, state, socket, runc root, CNI config and
 * bridge) and its own kubelet (port on the node's address, pod CIDR, cgroup root, root dir, pod logs),
 * as KUBELET-CLUSTER facts say a second node on one machine needs.
 */
import { chmod, chown, copyFile, mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { PAUSE_IMAGE } from './images.js';
import { AGENT_UID, logDir, type PodsNode } from './layout.js';
import { daemon, exists, sh, shOk, waitFor } from './sh.js';

const CNI_BIN = '/usr/lib/cni';
const CGROUP_FS = '/sys/fs/cgroup';

export function containerdConfig(node: PodsNode): string {
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return `# containerd for ${node.name} of devmig's pods environment (src/local/pods/node.ts).
version = 2
root = "${join(node.lib, 'containerd')}"
state = "${join(node.run, 'containerd')}"

[grpc]
  address = "${node.socket}"
[ttrpc]
  address = "${node.socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "${join(node.lib, 'opt')}"

[${cri}]
  sandbox_image = "${PAUSE_IMAGE}"
  # Root here may not lower a process's oom_score_adj; without this every sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [${cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [${cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [${cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${join(node.run, 'runc')}"
  [${cri}.cni]
    bin_dir = "${CNI_BIN}"
    conf_dir = "${join(node.lib, 'cni')}"
`;
}

/** bridge + host-local on the node's own bridge and subnet; no masquerade (the bridges route to each other). */
export function cniConfig(node: PodsNode): string {
  return JSON.stringify({
    cniVersion: '1.0.0',
    name: `devmig-${node.name}`,
    plugins: [{
      type: 'bridge', bridge: node.bridge, isGateway: true, ipMasq: false, hairpinMode: true,
      ipam: { type: 'host-local', ranges: [[{ subnet: node.subnet, gateway: node.ip }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: join(node.lib, 'ipam') },
    }],
  }, null, 2);
}

export function kubeletConfig(node: PodsNode, clientCaFile: string): string {
  return stringify({
    apiVersion: 'kubelet.config.k8s.io/v1beta1',
    kind: 'KubeletConfiguration',
    address: node.ip,
    port: 10250,
    readOnlyPort: 0,
    healthzPort: 0,
    // The API server proves itself with its client certificate; what it may do is asked of it (webhook).
    authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: clientCaFile } },
    authorization: { mode: 'Webhook' },
    cgroupDriver: 'cgroupfs',
    cgroupRoot: node.cgroupRoot,
    failCgroupV1: false,
    failSwapOn: false,
    containerRuntimeEndpoint: `unix://${node.socket}`,
    podCIDR: node.subnet,
    staticPodPath: join(node.lib, 'manifests'),
    podLogsDir: join(node.lib, 'pod-logs'),
    serializeImagePulls: false,
    // A busy disk on a shared machine must not evict devmig's pods, nor image GC delete the images
    // that were imported (no registry to pull them again).
    evictionHard: { 'memory.available': '100Mi', 'nodefs.available': '1%', 'nodefs.inodesFree': '1%', 'imagefs.available': '1%' },
    imageGCHighThresholdPercent: 100,
    imageGCLowThresholdPercent: 99,
    resolvConf: '/etc/resolv.conf',
    rotateCertificates: false,
    serverTLSBootstrap: false,
    shutdownGracePeriod: '0s',
  });
}

/**
 * The cgroup v1 hierarchies the kubelet uses (cgroupfs driver): its cgroup root must exist in each.
 * With `unified`, also the cgroup2 one a hybrid layout mounts beside them, where runc makes the
 * containers' cgroups too (teardown removes those).
 */
async function hierarchies(unified = false): Promise<string[]> {
  if (await exists(join(CGROUP_FS, 'cgroup.controllers'))) return [CGROUP_FS]; // cgroup v2 only
  const mounts = await readFile('/proc/self/mounts', 'utf8');
  return mounts.split('\n').map((l) => l.split(' ')).filter((f) => f[2] === 'cgroup' || (unified && f[2] === 'cgroup2')).map((f) => f[1]!);
}

export async function makeCgroups(node: PodsNode): Promise<void> {
  for (const h of await hierarchies()) {
    const dir = join(h, node.cgroupRoot);
    await mkdir(dir, { recursive: true });
    // A new cpuset cgroup has no CPUs or memory nodes until given its parent's.
    for (const f of ['cpuset.cpus', 'cpuset.mems']) {
      if (await exists(join(dir, f)) && !(await readFile(join(dir, f), 'utf8')).trim()) {
        await writeFile(join(dir, f), await readFile(join(h, f), 'utf8'));
      }
    }
  }
  if (await exists(join(CGROUP_FS, 'cgroup.controllers'))) {
    const available = (await readFile(join(CGROUP_FS, node.cgroupRoot, 'cgroup.controllers'), 'utf8')).trim().split(/\s+/);
    await writeFile(join(CGROUP_FS, node.cgroupRoot, 'cgroup.subtree_control'), available.map((c) => `+${c}`).join(' '));
  }
}

/** Removes the node's cgroups, deepest first (a cgroup with processes refuses; the caller stopped them). */
export async function removeCgroups(node: PodsNode): Promise<string[]> {
  const left: string[] = [];
  for (const h of await hierarchies(true)) {
    const dir = join(h, node.cgroupRoot);
    if (await exists(dir)) await rmdirTree(dir, left);
  }
  return left;
}

async function rmdirTree(dir: string, left: string[]): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (e.isDirectory()) await rmdirTree(join(dir, e.name), left);
  }
  await rmdir(dir).catch((e: NodeJS.ErrnoException) => { if (e.code !== 'ENOENT') left.push(`${dir} (${e.code})`); });
}

export async function startContainerd(dir: string, node: PodsNode): Promise<number> {
  for (const d of [node.run, node.lib, join(node.lib, 'cni')]) await mkdir(d, { recursive: true });
  const config = join(node.lib, 'containerd.toml');
  await writeFile(config, containerdConfig(node));
  await writeFile(join(node.lib, 'cni', '10-devmig.conflist'), cniConfig(node));
  const pid = daemon('containerd', ['--config', config], join(logDir(dir), `containerd-${node.name}.log`));
  await waitFor(`containerd of ${node.name} (${node.socket})`, 60_000, async () => (await sh('ctr', ['--address', node.socket, 'version'])) || undefined);
  return pid;
}

/** Where every kubelet's device manager listens, and device plugins register (Kubernetes' DevicePluginPath). */
const KUBELET_DEVICE_PLUGINS = '/var/lib/kubelet/device-plugins';

export interface KubeletFiles {
  readonly kubelet: string;
  readonly kubeconfig: string;
  readonly clientCaFile: string;
}

export async function startKubelet(dir: string, node: PodsNode, f: KubeletFiles): Promise<number> {
  for (const d of ['manifests', 'pod-logs', 'kubelet']) await mkdir(join(node.lib, d), { recursive: true });
  const config = join(node.lib, 'kubelet.yaml');
  await writeFile(config, kubeletConfig(node, f.clientCaFile));
  const kubeconfig = join(node.lib, 'kubeconfig');
  await copyFile(f.kubeconfig, kubeconfig);
  const root = kubeletRoot(node);
  const plugins = join(root, 'device-plugins');
  for (const d of [plugins, KUBELET_DEVICE_PLUGINS]) await mkdir(d, { recursive: true });
  // The root dir is a shared mount before the kubelet gets its own mount namespace: the volumes it
  // mounts there (Secrets, projected tokens) propagate to the host's, where containerd and runc are.
  if (!(await shOk('mountpoint', ['-q', root]))) await sh('mount', ['--bind', root, root]);
  await sh('mount', ['--make-shared', root]);
  // The device manager serves at /var/lib/kubelet/device-plugins whatever --root-dir says (a constant
  // in Kubernetes): kubelets sharing a host would take each other's kubelet.sock. Each sees its own
  // node's directory there, in a mount namespace of its own; the mount over the host's private root
  // mount stays in it.
  return daemon('unshare', [
    '--mount', '--propagation', 'unchanged', '--', 'sh', '-c', `mount --bind "$0" ${KUBELET_DEVICE_PLUGINS} && exec "$@"`, plugins, f.kubelet,
    '--config', config, '--kubeconfig', kubeconfig, '--root-dir', root,
    '--hostname-override', node.name, '--node-ip', node.ip, '--node-labels', 'devmig.io/vfio=true', '--v', '1',
  ], join(logDir(dir), `kubelet-${node.name}.log`));
}


/** The node's kubelet root: its device-plugins and pod-resources directories are under it. */
export const kubeletRoot = (node: PodsNode) => join(node.lib, 'kubelet');

/**
 * Lets the chart's simulated agents (uid and gid 65532, agent.podResources.withSimulated) read this
 * kubelet's PodResources API. The kubelet makes its socket root's alone; on a real node the agents
 * that read it are root. Only the agents' group gets in: the directory 0750 and the socket 0660, group
 * 65532. Done once the kubelet made them (it does before the node goes Ready).
 */
export async function openPodResources(node: PodsNode): Promise<void> {
  const dir = join(kubeletRoot(node), 'pod-resources');
  const socket = join(dir, 'kubelet.sock');
  await waitFor(`the PodResources socket of ${node.name} (${socket})`, 60_000, async () => ((await exists(socket)) ? true : undefined));
  await chown(dir, 0, AGENT_UID);
  await chmod(dir, 0o750);
  await chown(socket, 0, AGENT_UID);
  await chmod(socket, 0o660);
}
