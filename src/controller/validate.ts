/**
 * What the controller checks before it touches a device (what the API server cannot): the nodes
 * exist, their agents are ready, the devices exist and can migrate, their flags agree, nobody else
 * uses them. Each failure is a reason and a message that says what to fix.
 */
import { isFinalPhase } from '../api/types.js';
import type { DeviceMigration, DeviceNode, Kube } from '../kube/kube.js';
import { describeOccupancy, isFree as isFreeOccupancy } from '../api/occupancy.js';

/** `retry`: the answer may change by itself (an agent not ready yet, a device still held): ask again. */
export type Validation = { ok: true; targetDevice: string } | { ok: false; reason: string; message: string; retry?: boolean };

const HEARTBEAT_STALE_MS = 60_000;

/** The node's agent says it is ready, and said so within the last minute. */
export function agentReady(dn: DeviceNode, now = Date.now()): boolean {
  const beat = dn.status?.heartbeat ? Date.parse(dn.status.heartbeat) : 0;
  return Boolean(dn.status?.ready) && now - beat <= HEARTBEAT_STALE_MS;
}
const TRANSIENT = new Set(['AgentNotReady', 'DeviceBusy', 'NoFreeDevice']);
const fail = (reason: string, message: string): Validation => ({ ok: false, reason, message, retry: TRANSIENT.has(reason) });

type NodeDevice = NonNullable<NonNullable<DeviceNode['status']>['devices']>[number];

/**
 * Whether a device may receive: its agent records it free and no pod has it (DESIGN.md invariant 7).
 * The agent is the authority and refuses anything else itself; the controller reads its DeviceNode.
 */
export const isFree = (d: Pick<NodeDevice, 'occupancy'>): boolean => isFreeOccupancy(d.occupancy);

/**
 * node/device -> the unfinished migration that names it (source, or target once chosen). The
 * agents' DeviceNodes say the same only after an agent claimed the device and published it: two
 * migrations validated in that gap would pick one device twice.
 */
export function inFlight(migrations: DeviceMigration[], but?: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const x of migrations) {
    if (x.metadata.name === but || isFinalPhase(x.status?.phase)) continue;
    out.set(`${x.spec.source.node}/${x.spec.source.device}`, x.metadata.name);
    const dev = x.status?.targetDevice ?? x.spec.target.device;
    if (dev) out.set(`${x.spec.target.node}/${dev}`, x.metadata.name);
  }
  return out;
}

/** What validation reads: the migrations always fresh; Nodes and DeviceNodes may come from a short cache. */
export type ValidationReads = Pick<Kube, 'nodeExists' | 'getDeviceNode' | 'listMigrations'>;

export async function validate(kube: ValidationReads, m: DeviceMigration): Promise<Validation> {
  const { source, target } = m.spec;
  // Everything validation reads, read at once: five API round trips in the time of one.
  const [sourceExists, targetExists, sn, tn, all] = await Promise.all([
    kube.nodeExists(source.node), kube.nodeExists(target.node),
    kube.getDeviceNode(source.node), kube.getDeviceNode(target.node), kube.listMigrations(),
  ]);
  for (const [field, n, exists] of [['spec.source.node', source.node, sourceExists], ['spec.target.node', target.node, targetExists]] as const) {
    if (!exists) return fail('NodeNotFound', `${field}: node ${n} does not exist; fix ${field} (create a new DeviceMigration: spec is immutable)`);
  }
  for (const [field, n, dn] of [['spec.source.node', source.node, sn], ['spec.target.node', target.node, tn]] as const) {
    if (!dn) return fail('AgentNotReady', `${field}: node ${n} has no DeviceNode: is the devmig agent running there (is the node labelled for it)?`);
    if (!agentReady(dn)) return fail('AgentNotReady', `${field}: the devmig agent on ${n} is not ready (last heartbeat ${dn.status?.heartbeat ?? 'never'})`);
  }
  const sd = sn!.status?.devices?.find((d) => d.name === source.device);
  if (!sd) return fail('DeviceNotFound', `spec.source.device: node ${source.node} has no device ${source.device} (it has: ${names(sn!)}); fix spec.source.device`);
  if (!sd.flags.includes('STOP_COPY')) return fail('MigrationUnsupported', `spec.source.device: device ${source.device} on ${source.node} has no migration support (its driver lacks VFIO_MIGRATION_STOP_COPY)`);
  if (sd.migration && sd.migration !== m.metadata.name) return fail('DeviceBusy', `spec.source.device: device ${source.device} on ${source.node} is in use by migration ${sd.migration}; this one waits for it`);
  const busy = inFlight(all, m.metadata.name);
  const holder = busy.get(`${source.node}/${source.device}`);
  if (holder) return fail('DeviceBusy', `spec.source.device: device ${source.device} on ${source.node} is in use by migration ${holder}; this one waits for it`);
  const pick = pickTarget(m, tn!, busy);
  if (typeof pick === 'object' && 'ok' in pick) return pick;
  if (m.spec.strategy === 'PreCopy' && !(sd.flags.includes('PRE_COPY') && pick.flags.includes('PRE_COPY'))) {
    return fail('FlagsIncompatible', `spec.strategy: PreCopy needs PRE_COPY on both devices (${source.device}: ${sd.flags.join(',')}; ${pick.name}: ${pick.flags.join(',')}); use StopCopy or Auto`);
  }
  return { ok: true, targetDevice: pick.name };
}

/**
 * The target device: the one named, or a free one that can migrate and no migration is about to
 * take. A named device that holds a workload's state, or that a pod has, fails at once: waiting
 * would not change it, only a release (which resets it) would.
 */
function pickTarget(m: DeviceMigration, tn: DeviceNode, busy: Map<string, string>): NodeDevice | Validation {
  const { source, target } = m.spec;
  const candidates = (tn.status?.devices ?? []).filter((d) => !target.device || d.name === target.device);
  if (target.device && candidates.length === 0) {
    return fail('DeviceNotFound', `spec.target.device: node ${target.node} has no device ${target.device} (it has: ${names(tn)}); fix spec.target.device`);
  }
  const holder = target.device ? busy.get(`${target.node}/${target.device}`) ?? foreign(candidates[0]!, m) : undefined;
  if (holder) return fail('DeviceBusy', `spec.target.device: device ${target.device} on ${target.node} is in use by migration ${holder}; this one waits for it`);
  if (target.device && !isFree(candidates[0]!)) {
    return fail('DeviceOccupied', `spec.target.device: device ${target.device} on ${target.node} ${describeOccupancy(candidates[0]!.occupancy)}; it cannot receive another workload's state. ` +
      `Pick another device (or leave spec.target.device unset to get a free one), or release this one first: kubectl devmig release ${target.node}/${target.device} (a DeviceRelease resets it)`);
  }
  const pick = candidates
    .filter((d) => target.device || (isFree(d) && !busy.has(`${target.node}/${d.name}`)))
    .sort((a, b) => Number(a.state === 'RUNNING') - Number(b.state === 'RUNNING'))
    .find((d) => d.flags.includes('STOP_COPY') && !foreign(d, m) && !(target.node === source.node && d.name === source.device));
  if (pick) return pick;
  return fail(target.device ? 'MigrationUnsupported' : 'NoFreeDevice', target.device
    ? `spec.target.device: device ${target.device} on ${target.node} has no migration support (its driver lacks VFIO_MIGRATION_STOP_COPY); pick another device`
    : `spec.target.node: node ${target.node} has no free device with migration support (${occupancyList(tn)}); this one waits for one. ` +
      'Free one with kubectl devmig release NODE/DEVICE, or set spec.target.node to another node');
}

/** The migration in flight on a device by its DeviceNode, when it is another one than `m`. */
function foreign(d: NodeDevice, m: DeviceMigration): string | undefined {
  return d.migration && d.migration !== m.metadata.name ? d.migration : undefined;
}

function occupancyList(n: DeviceNode): string {
  return (n.status?.devices ?? []).map((d) => `${d.name}: ${d.migration ? `migration ${d.migration}` : d.occupancy ? `${d.occupancy.state} (${d.occupancy.reason})` : 'no record'}`).join(', ') || 'no devices';
}

function names(n: { status?: { devices?: Array<{ name: string }> } }): string {
  return n.status?.devices?.map((d) => d.name).join(', ') || 'none';
}
