/**
 * Kubernetes' own allocations (DESIGN.md invariant 7): the kubelet hands devices to pods through
 * device plugins or DRA, and a device a pod has is never a migration target. The agent asks the
 * kubelet's PodResources API (List) every few seconds, matches the device IDs to its devices
 * (src/kubelet/allocations.ts) and publishes the pods in its DeviceNode. Until a List has answered,
 * nothing is known: the agent then refuses to receive or release rather than guess.
 */
import type { Logger } from 'pino';
import type { PodAllocation } from '../api/types.js';
import { mapAllocations, type NodeDevice, type PodResourcesConfig, type PodUse } from '../kubelet/allocations.js';
import { PodResourcesClient } from '../kubelet/podresources.js';
import type { ManagedDevice } from './devices.js';

/** What the agent knows of the kubelet's allocations. */
export interface AllocationSource {
  /** The pods the kubelet allocated `device` to (empty: none, or not known yet). */
  of(device: string): PodAllocation[];
  /** Why the allocations are not known (no List has answered yet); undefined once they are. */
  unknown(): string | undefined;
}

/**
 * A kernel device's address as the kubelet's device plugins name it, from its object name: the PCI
 * address of pci-0000-3b-00-1, the UUID of mdev-<uuid>. A simulated device has neither: the config
 * maps its resource's IDs.
 */
export function nodeDeviceOf(d: Pick<ManagedDevice, 'name' | 'kind'>): NodeDevice {
  if (d.kind !== 'kernel') return { name: d.name };
  const pci = /^pci-([0-9a-f]{4})-([0-9a-f]{2})-([0-9a-f]{2})-([0-7])$/.exec(d.name);
  if (pci) return { name: d.name, pciAddress: `${pci[1]}:${pci[2]}:${pci[3]}.${pci[4]}` };
  const mdev = /^mdev-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/.exec(d.name);
  return mdev ? { name: d.name, mdevUuid: mdev[1] } : { name: d.name };
}

const toAllocation = (u: PodUse): PodAllocation => {
  const [namespace, pod] = u.pod.split('/') as [string, string];
  return { namespace, pod, container: u.container, resource: u.resourceName };
};

export class PodResourcesWatch implements AllocationSource {
  private byDevice: Record<string, PodAllocation[]> | undefined;
  private why = 'the kubelet\'s PodResources API has not answered yet';
  private timer: NodeJS.Timeout | undefined;
  private readonly client: PodResourcesClient;
  private readonly reported = new Set<string>();

  constructor(private readonly cfg: PodResourcesConfig & { intervalSeconds: number }, private readonly devices: () => NodeDevice[],
    private readonly log: Logger, private readonly changed: () => void) {
    this.client = new PodResourcesClient({ socket: cfg.socket, timeoutMs: cfg.timeoutSeconds * 1000 });
  }

  of(device: string): PodAllocation[] {
    return this.byDevice?.[device] ?? [];
  }

  unknown(): string | undefined {
    return this.byDevice ? undefined : this.why;
  }

  /** The first List before it returns (a failure is logged, and retried), then one every interval. */
  async start(): Promise<void> {
    await this.poll();
    this.timer = setInterval(() => { void this.poll(); }, this.cfg.intervalSeconds * 1000);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.client.close();
  }

  /** One List. A failure keeps what the last one said: a device a pod had is not free because the kubelet is slow. */
  async poll(): Promise<void> {
    try {
      const { byDevice, unmatched } = mapAllocations(await this.client.list(), this.devices(), this.cfg.resources);
      const next = Object.fromEntries(Object.entries(byDevice).map(([d, uses]) => [d, uses.map(toAllocation)]));
      const moved = JSON.stringify(next) !== JSON.stringify(this.byDevice);
      this.byDevice = next;
      for (const u of unmatched) {
        const key = `${u.resourceName}/${u.deviceId}`;
        if (this.reported.has(key)) continue;
        this.reported.add(key);
        this.log.info({ resource: u.resourceName, deviceId: u.deviceId }, 'an allocated device ID names none of this node\'s devices (another vendor\'s, or a podResources.resources mapping to add)');
      }
      if (moved) this.changed();
    } catch (e) {
      const message = (e as Error).message;
      if (!this.byDevice) this.why = `the kubelet's PodResources API: ${message}`;
      this.log.warn({ err: message, socket: this.cfg.socket }, 'PodResources List failed; keeping the last answer');
    }
  }
}
