/**
 * The pods environment's Go programs, built once into devmig's cache: kubelet, kube-controller-manager,
 * kube-scheduler and kubectl from the local API server's own Go module (one Kubernetes version for
 * all), and crictl (cri-tools) to empty a node's containerd at teardown and list its containers in
 * failure reports.
 */
import { access, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheDir, ensureApiserverBinary, ensureModuleBinaries, goBinary, run } from '../apiserver.js';
import { ensureHelm } from '../helm.js';

/** v1.35.0 is refused by the Go module proxy here; v1.34 speaks the CRI that containerd 1.6 serves. */
export const CRICTL_VERSION = 'v1.34.0';

export interface PodsBinaries {
  readonly apiserver: string;
  readonly kubelet: string;
  readonly controllerManager: string;
  readonly scheduler: string;
  readonly kubectl: string;
  readonly crictl: string;
  readonly helm: string;
}

export async function ensurePodsBinaries(log: (line: string) => void): Promise<PodsBinaries> {
  const apiserver = await ensureApiserverBinary(log);
  const k = await ensureModuleBinaries({
    kubelet: 'k8s.io/kubernetes/cmd/kubelet',
    'kube-controller-manager': 'k8s.io/kubernetes/cmd/kube-controller-manager',
    'kube-scheduler': 'k8s.io/kubernetes/cmd/kube-scheduler',
    kubectl: 'k8s.io/kubernetes/cmd/kubectl',
  }, log);
  return {
    apiserver, kubelet: k.kubelet!, controllerManager: k['kube-controller-manager']!, scheduler: k['kube-scheduler']!, kubectl: k.kubectl!,
    crictl: await ensureCrictl(log), helm: await ensureHelm(log),
  };
}

export async function ensureCrictl(log: (line: string) => void = () => undefined): Promise<string> {
  const dir = join(cacheDir(), 'bin', `crictl-${CRICTL_VERSION}`);
  const bin = join(dir, 'crictl');
  if (await access(bin).then(() => true, () => false)) return bin;
  await mkdir(dir, { recursive: true });
  log(`building crictl ${CRICTL_VERSION} from Go modules into ${dir}`);
  await run(goBinary(), ['install', `sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}`], tmpdir(), { ...process.env, GOBIN: dir, GOFLAGS: '-mod=mod' });
  return bin;
}
