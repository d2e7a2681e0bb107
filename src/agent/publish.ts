/**
 * The agent's DeviceNode: its devices with their flags, states and users, its endpoint and identity,
 * and a heartbeat. Written only by this node's agent (RBAC restricts it to its own object).
 */
import type { DeviceNodeStatus } from '../api/types.js';
import { Kube, type OwnerReference } from '../kube/kube.js';
import { clusterRoleOwner } from '../kube/owner.js';
import type { AgentContext } from './context.js';
import { deviceView } from './ops.js';

export class DeviceNodePublisher {
  private timer: NodeJS.Timeout | undefined;
  private readonly kube: Kube;
  private owner: OwnerReference | undefined;

  constructor(private readonly ctx: AgentContext, kubeconfig: string | undefined, private readonly endpoint: string, private readonly everyMs: number,
    private readonly ownerClusterRole?: string) {
    this.kube = Kube.fromFile(kubeconfig);
  }

  async start(): Promise<void> {
    if (this.ownerClusterRole) this.owner = await clusterRoleOwner(this.kube, this.ownerClusterRole);
    await this.publish();
    this.timer = setInterval(() => {
      this.publish().catch((e: unknown) => this.ctx.log.warn({ err: (e as Error).message }, 'DeviceNode heartbeat failed'));
    }, this.everyMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    clearTimeout(this.pending);
    this.stopped = true;
  }

  private pending: NodeJS.Timeout | undefined;
  private stopped = false;

  /** Publishes within a few milliseconds, once for any number of calls meanwhile (not on an op's path). */
  soon(): void {
    if (this.pending || this.stopped) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      this.publish().catch((e: unknown) => this.ctx.log.warn({ err: (e as Error).message }, 'DeviceNode update failed; the heartbeat tries again'));
    }, 5);
    this.pending.unref();
  }

  async publish(ready = !this.ctx.draining): Promise<void> {
    const node = this.ctx.config.node;
    const devices = await Promise.all(this.ctx.devices.list().map((d) => deviceView(this.ctx, d.name)));
    const status: DeviceNodeStatus = {
      devices: devices.map((d) => ({
        name: d.name, kind: d.kind, flags: d.flags as Array<'STOP_COPY' | 'P2P' | 'PRE_COPY'>,
        state: d.state, ...(d.migration ? { migration: d.migration } : {}), ...(d.role ? { role: d.role } : {}),
        ...(d.occupancy ? { occupancy: d.occupancy } : {}),
      })),
      heartbeat: new Date().toISOString(),
      ready,
    };
    await this.kube.upsertDeviceNode({ node, endpoint: this.endpoint, identity: `agent:${node}` }, status, this.owner);
  }
}
