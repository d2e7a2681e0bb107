/**
 * Which of this node's devices the kubelet gave to pods: the device IDs of a PodResources List,
 * matched to devmig's devices. A pure function of the List, the devices and the config section.
 *
 * How an ID names a device depends on who made it: the SR-IOV device plugin gives a PCI address
 * (BDF), an mdev-based plugin an mdev UUID, a simulated node's test plugin the device's name, and
 * anything else needs an explicit map. Kernel devices are matched by BDF or UUID whatever the
 * resource; a simulated device, which has neither, only through the config.
 */
import { z } from 'zod';
import { objectName } from '../agentapi/types.js';
import { isDriverName, isExtendedResourceName } from './names.js';
import { DEFAULT_POD_RESOURCES_SOCKET, DEFAULT_POD_RESOURCES_TIMEOUT_MS, type ContainerAllocation } from './podresources.js';

export const ID_KINDS = ['pciAddress', 'mdevUuid', 'name'] as const;
export type IdKind = (typeof ID_KINDS)[number];

const idMapping = z.union([
  z.enum(ID_KINDS),
  z.strictObject({
    map: z.record(z.string(), objectName).superRefine((rec, ctx) => {
      if ('' in rec) ctx.addIssue({ code: 'custom', message: 'has an empty device ID (""); every key must be a device ID' });
    }),
  }),
], { error: 'must be "pciAddress", "mdevUuid", "name", or { map: { <deviceId>: <deviceName> } }' });

export type DeviceIdMapping = z.infer<typeof idMapping>;

/** The agent config's `podResources` section. */
export const podResourcesConfigSchema = z.strictObject({
  /** The kubelet's pod-resources socket, as mounted into the agent. */
  socket: z.string().min(1).default(DEFAULT_POD_RESOURCES_SOCKET),
  /** Deadline of each call to the kubelet. */
  timeoutSeconds: z.number().positive().max(300).default(DEFAULT_POD_RESOURCES_TIMEOUT_MS / 1000),
  /**
   * For each resource name (a DRA driver's name for DRA devices), how its device IDs name this
   * node's devices. Unlisted resources match kernel devices by PCI address or mdev UUID.
   */
  resources: z.record(z.string(), idMapping).superRefine((rec, ctx) => {
    for (const key of Object.keys(rec)) {
      if (!isExtendedResourceName(key) && !isDriverName(key)) {
        ctx.addIssue({
          code: 'custom', path: [key],
          message: 'must be a device plugin\'s resource name (vendor.example/gpu) or a DRA driver\'s name (gpu.vendor.example)',
        });
      }
    }
  }).default({}),
});

export type PodResourcesConfig = z.infer<typeof podResourcesConfigSchema>;

/** One of this node's devices, as the mapping sees it. */
export interface NodeDevice {
  readonly name: string;
  /** Kernel backend: the PCI function's address, 0000:3b:00.1. */
  readonly pciAddress?: string;
  /** Kernel backend: the mediated device's UUID. */
  readonly mdevUuid?: string;
}

/** A container a device is allocated to. */
export interface PodUse {
  /** namespace/name */
  readonly pod: string;
  readonly container: string;
  readonly resourceName: string;
  readonly deviceId: string;
  /** DRA: the ResourceClaim, namespace/name. */
  readonly claim?: string;
}

export interface UnmatchedId {
  readonly resourceName: string;
  readonly deviceId: string;
}

export interface DeviceAllocations {
  /** Every device of the node by name, with the containers it is allocated to ([] when none). */
  readonly byDevice: Record<string, PodUse[]>;
  /** IDs that name none of this node's devices, each once: another vendor's devices, or a map to fill in. */
  readonly unmatched: UnmatchedId[];
}

export function mapAllocations(allocations: readonly ContainerAllocation[], devices: readonly NodeDevice[],
  resources: PodResourcesConfig['resources']): DeviceAllocations {
  const match = matcher(devices);
  const byDevice: Record<string, PodUse[]> = Object.fromEntries(devices.map((d) => [d.name, []]));
  const unmatched = new Map<string, UnmatchedId>();
  for (const a of allocations) {
    for (const deviceId of a.deviceIds) {
      const name = match(deviceId, resources[a.resourceName]);
      if (name === undefined) {
        unmatched.set(JSON.stringify([a.resourceName, deviceId]), { resourceName: a.resourceName, deviceId });
        continue;
      }
      const use: PodUse = {
        pod: `${a.namespace}/${a.pod}`, container: a.container, resourceName: a.resourceName, deviceId,
        ...(a.claim ? { claim: `${a.claim.namespace}/${a.claim.name}` } : {}),
      };
      const uses = byDevice[name]!;
      if (!uses.some((u) => sameUse(u, use))) uses.push(use);
    }
  }
  for (const uses of Object.values(byDevice)) uses.sort(byPodContainer);
  return { byDevice, unmatched: [...unmatched.values()].sort((x, y) => cmp(x.resourceName, y.resourceName) || cmp(x.deviceId, y.deviceId)) };
}

/** The name of the device an ID names under a mapping (none: by BDF or UUID), if it is one of ours. */
function matcher(devices: readonly NodeDevice[]): (id: string, how: DeviceIdMapping | undefined) => string | undefined {
  const byName = new Set(devices.map((d) => d.name));
  const byBdf = new Map<string, string>();
  const byUuid = new Map<string, string>();
  for (const d of devices) {
    const bdf = d.pciAddress === undefined ? undefined : normalizeBdf(d.pciAddress);
    if (bdf) byBdf.set(bdf, d.name);
    if (d.mdevUuid) byUuid.set(d.mdevUuid.toLowerCase(), d.name);
  }
  const viaBdf = (id: string) => { const b = normalizeBdf(id); return b === undefined ? undefined : byBdf.get(b); };
  const viaUuid = (id: string) => byUuid.get(id.toLowerCase());
  return (id, how) => {
    if (how === undefined) return viaBdf(id) ?? viaUuid(id);
    if (how === 'pciAddress') return viaBdf(id);
    if (how === 'mdevUuid') return viaUuid(id);
    const name = how === 'name' ? id : how.map[id];
    return name !== undefined && byName.has(name) ? name : undefined;
  };
}

/** 0000:3b:00.1 in lower case; a BDF without its domain (3b:00.1) is in domain 0000. */
export function normalizeBdf(s: string): string | undefined {
  const v = s.trim().toLowerCase();
  if (/^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/.test(v)) return v;
  if (/^[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/.test(v)) return `0000:${v}`;
  return undefined;
}

function sameUse(a: PodUse, b: PodUse): boolean {
  return a.pod === b.pod && a.container === b.container && a.resourceName === b.resourceName && a.deviceId === b.deviceId && a.claim === b.claim;
}

function byPodContainer(a: PodUse, b: PodUse): number {
  return cmp(a.pod, b.pod) || cmp(a.container, b.container) || cmp(a.resourceName, b.resourceName) || cmp(a.deviceId, b.deviceId);
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
