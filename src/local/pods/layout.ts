/**
 * Where the pods environment puts things, and the names and addresses it owns. One per machine: its
 * bridges, pod subnets, service address and cgroup roots are fixed, so `local down` finds all of it
 * even after an `up` that died half-way. Nothing here is used by anyone else: bridges devmig-brN,
 * pod subnets 10.244.N.0/24 (the bridge holds .1, which is also the node's address and its kubelet's),
 * the service range 10.96.0.0/16 of the local API server, cgroup roots /devmig-node-N.
 */
import { join, resolve } from 'node:path';

/** Runtime state: sockets, containerd's state, runc's root (tmpfs, short paths for unix sockets). */
export const RUN_ROOT = '/run/devmig-pods';
/** containerd's images and snapshots, kubelets' root dirs and pod logs. */
export const LIB_ROOT = '/var/lib/devmig-pods';
/** The agents' state on the nodes (the chart's agent.stateDir): journals and simulated device memory. */
export const DEVICE_ROOT = '/dev/shm/devmig-pods';
/** Says which environment directory owns the machine's pods environment. */
export const OWNER_FILE = join(RUN_ROOT, 'owner');
/** Tags every iptables rule the environment adds, so `down` deletes exactly those. */
export const RULE_COMMENT = 'devmig-pods';
/** The `kubernetes` Service's address in the API server's service range (--service-cluster-ip-range=10.96.0.0/16). */
export const KUBERNETES_SERVICE_IP = '10.96.0.1';
/** The user the chart's agents run as: the hostPath state directories must be theirs. */
export const AGENT_UID = 65532;
export const RELEASE = 'devmig';
/** What the test device plugin advertises the simulated devices as, by name (agent.podResources.resources). */
export const SIM_RESOURCE = 'devmig.io/sim';
export const NAMESPACE = 'devmig-system';
/** Paths that kubelet, containerd, CNI and buildah write whatever their configuration says. */
export const WRITTEN_ANYWAY = ['/var/lib/kubelet', '/var/log/pods', '/var/log/containers', '/var/lib/cni', '/run/containerd', '/var/lib/containers', '/run/netns'];

export interface PodsNode {
  readonly name: string;
  readonly index: number;
  readonly bridge: string;
  readonly subnet: string;
  /** The bridge's address: the pods' gateway, the node's InternalIP, where its kubelet listens. */
  readonly ip: string;
  readonly cgroupRoot: string;
  readonly run: string;
  readonly lib: string;
  readonly socket: string;
  /** This node's agent state directory on the host (the chart mounts agent.stateDir/<node>). */
  readonly agentState: string;
  /** Where this node's simulated devices live on the host: what `devmig sim digest --node` reads. */
  readonly simDir: string;
}

export function podsNode(index: number): PodsNode {
  const name = `node-${index}`;
  const run = join(RUN_ROOT, name);
  const lib = join(LIB_ROOT, name);
  return {
    name, index, bridge: `devmig-br${index}`, subnet: `10.244.${index}.0/24`, ip: `10.244.${index}.1`, cgroupRoot: `/devmig-${name}`,
    run, lib, socket: join(run, 'containerd.sock'), agentState: join(DEVICE_ROOT, name), simDir: join(DEVICE_ROOT, name, 'sim'),
  };
}

export const statePath = (dir: string) => join(resolve(dir), 'pods.json');
export const logDir = (dir: string) => join(resolve(dir), 'logs');
