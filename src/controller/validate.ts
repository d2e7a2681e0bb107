/**
 * What the controller checks before it touches a device (what the API server cannot): the nodes
 * exist, their agents are ready, the devices exist and can migrate, their flags agree, nobody else
 * uses them. Each failure is a reason and a message that says what to fix.
 */
import type { DeviceMigration, DeviceNode, Kube } from './kube.js';

/** `retry`: the answer may change by itself (an agent not ready yet, a device still held): ask again. */
export type Validation = { ok: true; targetDevice: string } | { ok: false; reason: string; message: string; retry?: boolean };

const HEARTBEAT_STALE_MS = 60_000;
const TRANSIENT = new Set(['AgentNotReady', 'DeviceBusy', 'NoFreeDevice']);
const fail = (reason: string, message: string): Validation => ({ ok: false, reason, message, retry: TRANSIENT.has(reason) });

export async function validate(kube: Kube, m: DeviceMigration): Promise<Validation> {
  const { source, target } = m.spec;
  for (const [field, n] of [['spec.source.node', source.node], ['spec.target.node', target.node]] as const) {
    if (!(await kube.nodeExists(n))) return fail('NodeNotFound', `${field}: node ${n} does not exist; fix ${field} (create a new DeviceMigration: spec is immutable)`);
  }
  const [sn, tn] = await Promise.all([kube.getDeviceNode(source.node), kube.getDeviceNode(target.node)]);
  for (const [field, n, dn] of [['spec.source.node', source.node, sn], ['spec.target.node', target.node, tn]] as const) {
    if (!dn) return fail('AgentNotReady', `${field}: node ${n} has no DeviceNode: is the devmig agent running there (is the node labelled for it)?`);
    const beat = dn.status?.heartbeat ? Date.parse(dn.status.heartbeat) : 0;
    if (!dn.status?.ready || Date.now() - beat > HEARTBEAT_STALE_MS) return fail('AgentNotReady', `${field}: the devmig agent on ${n} is not ready (last heartbeat ${dn.status?.heartbeat ?? 'never'})`);
  }
  const sd = sn!.status?.devices?.find((d) => d.name === source.device);
  if (!sd) return fail('DeviceNotFound', `spec.source.device: node ${source.node} has no device ${source.device} (it has: ${names(sn!)}); fix spec.source.device`);
  if (!sd.flags.includes('STOP_COPY')) return fail('MigrationUnsupported', `spec.source.device: device ${source.device} on ${source.node} has no migration support (its driver lacks VFIO_MIGRATION_STOP_COPY)`);
  if (sd.migration && sd.migration !== m.metadata.name) return fail('DeviceBusy', `spec.source.device: device ${source.device} on ${source.node} is in use by migration ${sd.migration}; this one waits for it`);
  const pick = pickTarget(m, tn!);
  if (typeof pick === 'object' && 'ok' in pick) return pick;
  if (m.spec.strategy === 'PreCopy' && !(sd.flags.includes('PRE_COPY') && pick.flags.includes('PRE_COPY'))) {
    return fail('FlagsIncompatible', `spec.strategy: PreCopy needs PRE_COPY on both devices (${source.device}: ${sd.flags.join(',')}; ${pick.name}: ${pick.flags.join(',')}); use StopCopy or Auto`);
  }
  return { ok: true, targetDevice: pick.name };
}

type NodeDevice = NonNullable<NonNullable<DeviceNode['status']>['devices']>[number];

/** The target device: the one named, or the first free one that can migrate. */
function pickTarget(m: DeviceMigration, tn: DeviceNode): NodeDevice | Validation {
  const { source, target } = m.spec;
  const candidates = (tn.status?.devices ?? []).filter((d) => !target.device || d.name === target.device);
  if (target.device && candidates.length === 0) {
    return fail('DeviceNotFound', `spec.target.device: node ${target.node} has no device ${target.device} (it has: ${names(tn)}); fix spec.target.device`);
  }
  const pick = candidates.find((d) => d.flags.includes('STOP_COPY') && (!d.migration || d.migration === m.metadata.name)
    && !(target.node === source.node && d.name === source.device));
  if (pick) return pick;
  return fail(target.device ? 'DeviceBusy' : 'NoFreeDevice', target.device
    ? `spec.target.device: device ${target.device} on ${target.node} cannot receive: it is in use or has no migration support`
    : `spec.target.node: node ${target.node} has no free device with migration support; set spec.target.device or free one`);
}

function names(n: { status?: { devices?: Array<{ name: string }> } }): string {
  return n.status?.devices?.map((d) => d.name).join(', ') || 'none';
}
