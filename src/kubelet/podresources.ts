/**
 * A client of the kubelet's PodResources v1 API, over its unix socket: which devices the kubelet
 * gave to which pods' containers (device plugins and DRA), and which devices it can allocate.
 * Every call has a deadline; every failure says what to do about it and names the socket.
 */
import { Client, credentials, status, type MethodDefinition, type ServiceError } from '@grpc/grpc-js';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { unary, unixTarget } from './grpc.js';
import { podResourcesLister, type AllocatableResourcesResponse, type ContainerDevicesMsg, type ListPodResourcesResponse } from './podresources-api.js';

export const DEFAULT_POD_RESOURCES_SOCKET = '/var/lib/kubelet/pod-resources/kubelet.sock';
export const DEFAULT_POD_RESOURCES_TIMEOUT_MS = 5000;
/** What the kubelet's own client accepts (podresources.DefaultMaxMsgSize): a List of a full node. */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/**
 * One container's devices of one resource. For a device plugin: its resource name and the device
 * IDs it advertised. For a DRA device: `resourceName` is the driver's name and `deviceIds` the one
 * device's name in its pool, so both map to devmig's devices the same way; `claim` says more.
 */
export interface ContainerAllocation {
  readonly namespace: string;
  readonly pod: string;
  readonly container: string;
  readonly resourceName: string;
  readonly deviceIds: readonly string[];
  readonly claim?: ClaimDevice;
}

/** A device that DRA allocated through a ResourceClaim. */
export interface ClaimDevice {
  readonly name: string;
  readonly namespace: string;
  readonly driver: string;
  readonly pool: string;
  readonly device: string;
}

/** Devices of one resource the kubelet can allocate (device plugins only: DRA devices are not listed). */
export interface ResourceDevices {
  readonly resourceName: string;
  readonly deviceIds: readonly string[];
}

export type PodResourcesErrorCode = 'SocketMissing' | 'NotASocket' | 'PermissionDenied' | 'KubeletNotListening' | 'Unimplemented'
  | 'Timeout' | 'RateLimited' | 'Failed';

export class PodResourcesError extends Error {
  override readonly name = 'PodResourcesError';
  constructor(readonly code: PodResourcesErrorCode, message: string, readonly socket: string, readonly grpcCode?: status) {
    super(message);
  }
}

export interface PodResourcesClientOptions {
  /** The kubelet's pod-resources socket; default /var/lib/kubelet/pod-resources/kubelet.sock. */
  readonly socket?: string;
  /** Deadline of each call. */
  readonly timeoutMs?: number;
}

export class PodResourcesClient {
  readonly socket: string;
  readonly timeoutMs: number;
  private readonly client: Client;

  constructor(opts: PodResourcesClientOptions = {}) {
    this.socket = opts.socket ?? DEFAULT_POD_RESOURCES_SOCKET;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_POD_RESOURCES_TIMEOUT_MS;
    this.client = new Client(unixTarget(this.socket), credentials.createInsecure(), {
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    });
  }

  /** Every container's allocated devices, one entry per (container, resource) or DRA device. */
  async list(): Promise<ContainerAllocation[]> {
    return flattenList(await this.call(podResourcesLister.List, {}));
  }

  /** The devices the kubelet can allocate, by resource name. */
  async allocatable(): Promise<ResourceDevices[]> {
    const res: AllocatableResourcesResponse = await this.call(podResourcesLister.GetAllocatableResources, {});
    return [...mergeByResource(res.devices)].map(([resourceName, deviceIds]) => ({ resourceName, deviceIds }));
  }

  close(): void {
    this.client.close();
  }

  private async call<Req, Res>(m: MethodDefinition<Req, Res>, req: Req): Promise<Res> {
    try {
      return await unary(this.client, m, req, this.timeoutMs);
    } catch (e) {
      throw await explain(e as ServiceError, m.originalName ?? m.path, this.socket, this.timeoutMs);
    }
  }
}

function flattenList(res: ListPodResourcesResponse): ContainerAllocation[] {
  const out: ContainerAllocation[] = [];
  for (const p of res.podResources) {
    for (const c of p.containers) {
      const at = { namespace: p.namespace, pod: p.name, container: c.name };
      for (const [resourceName, deviceIds] of mergeByResource(c.devices)) out.push({ ...at, resourceName, deviceIds });
      for (const d of c.dynamicResources) {
        // A claim's resource without a device name would be a resource DRA does not have yet (the
        // API reserves the shape for it): nothing of ours.
        for (const r of d.claimResources.filter((x) => x.deviceName)) {
          out.push({
            ...at, resourceName: r.driverName, deviceIds: [r.deviceName],
            claim: { name: d.claimName, namespace: d.claimNamespace, driver: r.driverName, pool: r.poolName, device: r.deviceName },
          });
        }
      }
    }
  }
  return out;
}

/** The kubelet sends one entry per device and NUMA node; one per resource is what a reader wants. */
function mergeByResource(entries: readonly ContainerDevicesMsg[]): Map<string, string[]> {
  const by = new Map<string, string[]>();
  for (const e of entries) {
    const ids = by.get(e.resourceName) ?? [];
    for (const id of e.deviceIds) if (!ids.includes(id)) ids.push(id);
    by.set(e.resourceName, ids);
  }
  return by;
}

/** Turns a failed call into what the operator can act on, looking at the socket when it was not reached. */
async function explain(err: ServiceError, method: string, socket: string, timeoutMs: number): Promise<PodResourcesError> {
  const fail = (code: PodResourcesErrorCode, message: string) => new PodResourcesError(code, message, socket, err.code);
  switch (err.code) {
    case status.UNIMPLEMENTED:
      return fail('Unimplemented', `the kubelet on ${socket} does not implement ${method}: it predates the v1 PodResources API `
        + '(Kubernetes 1.20), or the method is behind a feature gate that is off (GetAllocatableResources: '
        + 'KubeletPodResourcesGetAllocatable, on by default since 1.23). Upgrade the kubelet or turn the gate on');
    case status.DEADLINE_EXCEEDED:
      return fail('Timeout', `no answer from the kubelet on ${socket} to ${method} in ${timeoutMs} ms: it is overloaded or hung`);
    case status.RESOURCE_EXHAUSTED:
      return fail('RateLimited', `the kubelet on ${socket} refused ${method}: too many calls to its pod-resources API `
        + `(it rate-limits them); call it less often (${err.details})`);
    case status.UNAVAILABLE:
      return unreachable(err, method, socket, fail);
    default:
      return fail('Failed', `${method} on the kubelet's socket ${socket} failed: ${status[err.code]}: ${err.details}`);
  }
}

async function unreachable(err: ServiceError, method: string, socket: string,
  fail: (code: PodResourcesErrorCode, message: string) => PodResourcesError): Promise<PodResourcesError> {
  // The error's errno, not `instanceof Error`: errors from another realm (a test runner's) are not instances.
  const st = await stat(socket).then((s) => ({ s, code: undefined }), (e: NodeJS.ErrnoException) => ({ s: undefined, code: e.code }));
  if (/EACCES|EPERM|permission denied/i.test(err.details) || st.code === 'EACCES') {
    return fail('PermissionDenied', `permission denied connecting to the kubelet's socket ${socket}: it is writable by root only; `
      + 'run the agent\'s container as root (runAsUser: 0) or give it the socket\'s owner');
  }
  if (st.code === 'ENOENT') {
    const dir = dirname(socket);
    const dirThere = await stat(dir).then((s) => s.isDirectory(), () => false);
    return fail('SocketMissing', dirThere
      ? `the kubelet's pod-resources socket ${socket} does not exist: is the kubelet running, with this root dir? Is its `
        + 'KubeletPodResources feature on (the default since Kubernetes 1.15)?'
      : `the kubelet's pod-resources socket ${socket} does not exist, nor its directory ${dir}: mount the kubelet's `
        + 'pod-resources directory (hostPath /var/lib/kubelet/pod-resources) into the agent\'s container, read-only');
  }
  if (st.s && !st.s.isSocket()) {
    return fail('NotASocket', `${socket} is not a socket: mount the kubelet's pod-resources directory, not the socket file itself `
      + '(a hostPath volume of type DirectoryOrCreate or FileOrCreate puts a directory or a file there when the socket is missing)');
  }
  if (/ECONNREFUSED/.test(err.details)) {
    return fail('KubeletNotListening', `nothing listens on the kubelet's socket ${socket}: the kubelet is not running, or is restarting`);
  }
  return fail('Failed', `${method} on the kubelet's socket ${socket} failed: UNAVAILABLE: ${err.details}`);
}
