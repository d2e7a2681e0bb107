/**
 * The pods environment a test/cluster run is given (npm run test:cluster brings it up and passes its
 * directory in DEVMIG_CLUSTER): its kubeconfig, its tools (kubectl, helm, crictl built for it), and
 * the simulated devices on each node's hostPath, read from the host as `devmig sim digest` does.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Kube } from '../../src/kube/kube.js';
import { readPods, type PodsState } from '../../src/local/pods/cluster.js';
import { NAMESPACE, RELEASE } from '../../src/local/pods/layout.js';
import { sh } from '../../src/local/pods/sh.js';
import { CHART } from '../../src/local/helm.js';
import type { MigStateName } from '../../src/vfio/uapi.js';

export interface PodsCluster {
  readonly state: PodsState;
  readonly kube: Kube;
  kubectl(...args: string[]): Promise<string>;
  helm(...args: string[]): Promise<string>;
  /** The host directory of a node's simulated devices. */
  simDir(node: string): string;
  /** What a simulated device says of itself on the node (device.json): its state and how often it was reset. */
  device(node: string, device: string): Promise<{ state: MigStateName; resets: number; generation: number }>;
}

export const ns = NAMESPACE;
export const release = RELEASE;
export const chart = CHART;

export function podsCluster(): PodsCluster {
  let state: PodsState | undefined;
  let kube: Kube | undefined;
  beforeAll(async () => {
    const dir = process.env.DEVMIG_CLUSTER;
    if (!dir) throw new Error('test/cluster runs on the pods environment: use `npm run test:cluster`');
    state = await readPods(dir);
    if (!state?.ready) throw new Error(`no ready pods environment in ${dir}`);
    kube = Kube.fromFile(state.kubeconfig);
  });
  const s = () => state!;
  return {
    get state() { return s(); },
    get kube() { return kube!; },
    kubectl: (...args) => sh(s().tools!.kubectl, ['--kubeconfig', s().kubeconfig, ...args]),
    helm: (...args) => sh(s().tools!.helm, ['--kubeconfig', s().kubeconfig, ...args], {
      env: { ...process.env, HELM_CACHE_HOME: join(s().dir, 'helm', 'cache'), HELM_CONFIG_HOME: join(s().dir, 'helm', 'config') },
    }),
    simDir: (node) => s().nodes.find((n) => n.name === node)!.simDir,
    device: async (node, device) => JSON.parse(await readFile(join(s().nodes.find((n) => n.name === node)!.simDir, device, 'device.json'), 'utf8')) as {
      state: MigStateName; resets: number; generation: number;
    },
  };
}
