/**
 * DeviceRelease: a person or a GitOps repository frees a device that holds a workload's state, so
 * that it may receive another (DESIGN.md invariant 7). The device's agent does it: it resets the
 * device (no copy of the state stays where another workload may read it) and records it free. This
 * reconciler checks the request, records it (Releasing) before it asks the agent, and records the
 * outcome: who asked, when, what the device held. A DeviceRelease acts once: its op is named after
 * its uid, so a repeat (a restart, the same YAML applied again) answers what the first did.
 */
import type { Logger } from 'pino';
import type { Condition, DeviceReleaseStatus, Occupancy } from '../api/types.js';
import { AgentCallError, AgentClient } from '../agentapi/client.js';
import { RelayError } from '../relay/errors.js';
import type { DeviceNode, DeviceRelease, Kube } from '../kube/kube.js';
import { describeOccupancy } from '../api/occupancy.js';
import { stamped } from './conditions.js';
import { agentReady } from './validate.js';

export interface ReleaseDeps {
  readonly kube: Kube;
  readonly log: Logger;
  /** The control API client of `node`'s agent (pinned to its identity), or why its endpoint is refused. */
  readonly agent: (node: string, n: DeviceNode) => Promise<AgentClient | { reason: string; message: string }>;
  readonly now?: () => number;
}

/** Answers of the agent that change by themselves: asked again, with a condition that says why. */
const WAIT = new Set(['DeviceBusy', 'DeviceAllocated', 'Draining', 'TooManySessions']);
const RETRY_MS = 2000;

/** Who asked: spec.requestedBy, which the admission policy checks is the creating user, else the tool that created it. */
export function requester(r: DeviceRelease): string {
  if (r.spec.requestedBy) return r.spec.requestedBy;
  const created = r.metadata.managedFields?.find((f) => f.subresource !== 'status' && (f.operation === 'Update' || f.operation === 'Apply'));
  return created?.manager ? `field manager ${created.manager}` : 'unknown (no spec.requestedBy, no field manager)';
}

export class ReleaseReconciler {
  constructor(private readonly d: ReleaseDeps) {}

  private now(): number {
    return (this.d.now ?? Date.now)();
  }

  async reconcile(name: string): Promise<{ requeueAfterMs?: number }> {
    const r = await this.d.kube.getRelease(name);
    if (!r || r.metadata.deletionTimestamp || r.status?.phase === 'Released' || r.status?.phase === 'Failed') return {};
    const { node, device } = r.spec;
    const dn = await this.d.kube.getDeviceNode(node);
    if (!dn) {
      if (!(await this.d.kube.nodeExists(node))) return this.fail(r, 'NodeNotFound', `spec.node: node ${node} does not exist; fix spec.node (create a new DeviceRelease: spec is immutable)`);
      return this.wait(r, 'AgentNotReady', `spec.node: node ${node} has no DeviceNode: is the devmig agent running there?`);
    }
    if (!agentReady(dn, this.now())) return this.wait(r, 'AgentNotReady', `spec.node: the devmig agent on ${node} is not ready (last heartbeat ${dn.status?.heartbeat ?? 'never'})`);
    const listed = dn.status?.devices?.find((x) => x.name === device);
    if (!listed) {
      return this.fail(r, 'DeviceNotFound', `spec.device: node ${node} has no device ${device} (it has: ${dn.status?.devices?.map((x) => x.name).join(', ') || 'none'}); fix spec.device`);
    }
    const by = requester(r);
    // The intent on record before the agent acts: a restart asks again, and the agent's op answers once.
    if (r.status?.phase !== 'Releasing') {
      await this.write(r, { phase: 'Releasing', releasedBy: by, ...(listed.occupancy ? { previous: listed.occupancy } : {}) },
        [{ type: 'Ready', status: 'False', reason: 'Releasing', message: `asking the agent of ${node} to reset ${device}` }]);
    }
    const agent = await this.d.agent(node, dn);
    if (!(agent instanceof AgentClient)) return this.wait(r, agent.reason, agent.message);
    let answer: { previous?: Occupancy };
    try {
      answer = await agent.free(device, { op: `free-${r.metadata.uid ?? name}`.slice(0, 63).replace(/-+$/, ''), release: name, requestedBy: by });
    } catch (e) {
      if (e instanceof AgentCallError && WAIT.has(e.code)) return this.wait(r, e.code, e.message);
      // Refused in the handshake (not node's agent): nothing was sent; asked again once the endpoint is right.
      if (e instanceof RelayError && e.code === 'PeerIdentityMismatch') return this.wait(r, e.code, e.message);
      if (e instanceof AgentCallError && e.status >= 400 && e.status < 500) return this.fail(r, e.code, e.message);
      return this.wait(r, 'AgentUnreachable', `the agent of ${node}: ${(e as Error).message}`);
    }
    const previous = answer.previous ?? r.status?.previous;
    const status: DeviceReleaseStatus = {
      phase: 'Released', releasedAt: new Date(this.now()).toISOString(), releasedBy: by, ...(previous ? { previous } : {}),
    };
    const held = previous ? `before, it ${describeOccupancy(previous)}` : 'what it held before was not recorded';
    const message = `${node}/${device} was reset and is free to receive; ${held}. Released by ${by}`;
    await this.write(r, status, [{ type: 'Ready', status: 'True', reason: 'Released', message }]);
    this.tell(r, 'Normal', 'Released', message);
    this.d.log.info({ release: name, node, device, by, previous }, 'device released');
    return {};
  }

  private async fail(r: DeviceRelease, reason: string, message: string): Promise<{ requeueAfterMs?: number }> {
    await this.write(r, { phase: 'Failed', failure: { reason, message } }, [{ type: 'Ready', status: 'False', reason, message }]);
    this.tell(r, 'Warning', reason, message);
    return {};
  }

  private async wait(r: DeviceRelease, reason: string, message: string): Promise<{ requeueAfterMs?: number }> {
    await this.write(r, { phase: r.status?.phase ?? 'Pending' }, [{ type: 'Ready', status: 'False', reason, message: `${message}; waiting` }]);
    return { requeueAfterMs: RETRY_MS };
  }

  /** Status merged over what is there, written only when it changed. */
  private async write(r: DeviceRelease, s: Omit<DeviceReleaseStatus, 'conditions'>, conditions: Array<Omit<Condition, 'lastTransitionTime'>>): Promise<void> {
    const next: DeviceReleaseStatus = {
      ...(r.status ?? {}), ...s, observedGeneration: r.metadata.generation, conditions: stamped(r.status?.conditions, conditions, r.metadata.generation, this.now()),
    };
    if (JSON.stringify(next) === JSON.stringify(r.status ?? {})) return;
    r.status = (await this.d.kube.patchReleaseStatus(r.metadata.name, next)).status;
  }

  private tell(r: DeviceRelease, type: 'Normal' | 'Warning', reason: string, message: string): void {
    this.d.kube.event(r, type, reason, message)
      .catch((e: unknown) => this.d.log.warn({ release: r.metadata.name, err: (e as Error).message }, 'could not create an Event'));
  }
}
