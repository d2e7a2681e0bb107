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
  for (const n of [source.node, target.node]) {
    if (!(await kube.nodeExists(n))) return fail('NodeNotFound', `node ${n} does not exist; check spec.source.node and spec.target.node`);
  }
  const [sn, tn] = await Promise.all([kube.getDeviceNode(source.node), kube.getDeviceNode(target.node)]);
  for (const [n, dn] of [[source.node, sn], [target.node, tn]] as const) {
    if (!dn) return fail('AgentNotReady', `node ${n} has no DeviceNode: is the devmig agent running there?`);
    const beat = dn.status?.heartbeat ? Date.parse(dn.status.heartbeat) : 0;
    if (!dn.status?.ready || Date.now() - beat > HEARTBEAT_STALE_MS) return fail('AgentNotReady', `the devmig agent on ${n} is not ready (last heartbeat ${dn.status?.heartbeat ?? 'never'})`);
  }
  const sd = sn!.status?.devices?.find((d) => d.name === source.device);
  if (!sd) return fail('DeviceNotFound', `node ${source.node} has no device ${source.device} (it has: ${names(sn!)}); fix spec.source.device`);
  if (!sd.flags.includes('STOP_COPY')) return fail('MigrationUnsupported', `device ${source.device} on ${source.node} has no migration support`);
  if (sd.migration && sd.migration !== m.metadata.name) return fail('DeviceBusy', `device ${source.device} on ${source.node} is in use by migration ${sd.migration}`);
  const pick = pickTarget(m, tn!);
  if (typeof pick === 'object' && 'ok' in pick) return pick;
  if (m.spec.strategy === 'PreCopy' && !(sd.flags.includes('PRE_COPY') && pick.flags.includes('PRE_COPY'))) {
    return fail('FlagsIncompatible', `strategy PreCopy needs PRE_COPY on both devices (${source.device}: ${sd.flags.join(',')}; ${pick.name}: ${pick.flags.join(',')}); use StopCopy or Auto`);
  }
  return { ok: true, targetDevice: pick.name };
}

type NodeDevice = NonNullable<NonNullable<DeviceNode['status']>['devices']>[number];

/** The target device: the one named, or the first free one that can migrate. */
function pickTarget(m: DeviceMigration, tn: DeviceNode): NodeDevice | Validation {
  const { source, target } = m.spec;
  const candidates = (tn.status?.devices ?? []).filter((d) => !target.device || d.name === target.device);
  if (target.device && candidates.length === 0) {
    return fail('DeviceNotFound', `node ${target.node} has no device ${target.device} (it has: ${names(tn)}); fix spec.target.device`);
  }
  const pick = candidates.find((d) => d.flags.includes('STOP_COPY') && (!d.migration || d.migration === m.metadata.name)
    && !(target.node === source.node && d.name === source.device));
  if (pick) return pick;
  return fail(target.device ? 'DeviceBusy' : 'NoFreeDevice', target.device
    ? `device ${target.device} on ${target.node} cannot receive: it is in use or has no migration support`
    : `node ${target.node} has no free device with migration support; set spec.target.device or free one`);
}

function names(n: { status?: { devices?: Array<{ name: string }> } }): string {
  return n.status?.devices?.map((d) => d.name).join(', ') || 'none';
}
