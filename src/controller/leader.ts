/**
 * Leader election on a coordination.k8s.io Lease. client-node has none, and its typed Lease client
 * writes times with millisecond precision where MicroTime wants six digits, so the Lease is handled
 * as plain JSON through the custom objects client.
 */
import type { Logger } from 'pino';
import type { Kube, OwnerReference } from '../kube/kube.js';
import { withOwner } from '../kube/owner.js';

export interface LeaderOptions {
  readonly namespace: string;
  readonly name: string;
  readonly identity: string;
  readonly leaseSeconds: number;
  /** The release's object the Lease belongs to (see kube/owner.ts). */
  readonly owner?: OwnerReference;
}

interface Lease {
  metadata: { name: string; resourceVersion?: string; ownerReferences?: OwnerReference[] };
  spec: { holderIdentity?: string; leaseDurationSeconds?: number; renewTime?: string; acquireTime?: string; leaseTransitions?: number };
}

export function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

const path = (o: LeaderOptions) => ({ group: 'coordination.k8s.io', version: 'v1', namespace: o.namespace, plural: 'leases' });

/** One try: true while we hold the lease (acquired or renewed). */
export async function tryLead(kube: Kube, o: LeaderOptions, now = Date.now()): Promise<boolean> {
  let lease: Lease | undefined;
  try {
    lease = (await kube.custom.getNamespacedCustomObject({ ...path(o), name: o.name })) as Lease;
  } catch (e) {
    if ((e as { code?: number }).code !== 404) throw e;
  }
  const spec = { holderIdentity: o.identity, leaseDurationSeconds: o.leaseSeconds, renewTime: microTime(now) };
  if (!lease) {
    await kube.custom.createNamespacedCustomObject({ ...path(o), body: {
      apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: o.name, namespace: o.namespace, ...(o.owner ? { ownerReferences: [o.owner] } : {}) },
      spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 },
    } });
    return true;
  }
  const s = lease.spec;
  const expired = !s.renewTime || Date.parse(s.renewTime) + (s.leaseDurationSeconds ?? o.leaseSeconds) * 1000 < now;
  if (s.holderIdentity !== o.identity && !expired) return false;
  const taking = s.holderIdentity !== o.identity;
  const owners = o.owner ? withOwner(lease.metadata.ownerReferences, o.owner) : undefined;
  await kube.custom.replaceNamespacedCustomObject({ ...path(o), name: o.name, body: {
    apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: owners ? { ...lease.metadata, ownerReferences: owners } : lease.metadata,
    spec: { ...s, ...spec, ...(taking ? { acquireTime: microTime(now), leaseTransitions: (s.leaseTransitions ?? 0) + 1 } : {}) },
  } });
  return true;
}

/** Resolves once we lead; calls onLost if a renewal fails for a whole lease period. */
export async function lead(kube: Kube, o: LeaderOptions, log: Logger, onLost: () => void): Promise<() => void> {
  const every = Math.max(1000, (o.leaseSeconds * 1000) / 3);
  // A standby replica says so once: its log would otherwise stay empty until it leads.
  log.info({ lease: `${o.namespace}/${o.name}`, identity: o.identity }, 'waiting to lead');
  for (;;) {
    const ok = await tryLead(kube, o).catch((e: unknown) => { log.warn({ err: (e as Error).message }, 'lease'); return false; });
    if (ok) break;
    await new Promise((r) => setTimeout(r, every));
  }
  log.info({ lease: `${o.namespace}/${o.name}`, identity: o.identity }, 'leading');
  let lastRenew = Date.now();
  const timer = setInterval(() => {
    tryLead(kube, o).then((ok) => {
      if (ok) lastRenew = Date.now();
      else onLost();
    }, () => { if (Date.now() - lastRenew > o.leaseSeconds * 1000) onLost(); });
  }, every);
  return () => clearInterval(timer);
}
