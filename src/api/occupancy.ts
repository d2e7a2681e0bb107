/**
 * What a device holds, said the same way everywhere a person reads it: in the agent's refusals, the
 * controller's validation, a DeviceRelease's status and `kubectl devmig devices`.
 */
import type { Occupancy } from './types.js';

/** Only a free device that no pod has may receive (DESIGN.md invariant 7); no record: not known to be free. */
export const isFree = (o: Occupancy | undefined): boolean => o?.state === 'Free';

/** A clause that completes "device D ...": what it holds, and since when. */
export function describeOccupancy(o: Occupancy | undefined): string {
  if (!o) return 'has no occupancy record (its agent has not recorded it yet, or is of an older release): it is not known to be free';
  if (o.state === 'Allocated') return `is allocated by the kubelet to ${(o.pods ?? []).map((p) => `pod ${p.namespace}/${p.pod} (${p.resource})`).join(', ')}`;
  if (o.state === 'Free') return `is free (${o.reason}) since ${o.since}`;
  if (o.reason === 'FoundInUse') return `was found in use when its agent first started (${o.since}) and is not declared spare: it may hold a workload's state`;
  return `holds the state that migration ${o.migration ?? '?'} moved there${o.digest ? ` (digest ${o.digest})` : ''} since ${o.since}`;
}

/** A short form for a table cell: Free (Spare), Holding dm-1, Allocated ns/pod. */
export function occupancyCell(o: Occupancy | undefined): string {
  if (!o) return 'unknown';
  if (o.state === 'Allocated') return `Allocated ${(o.pods ?? []).map((p) => `${p.namespace}/${p.pod}`).join(',')}`;
  if (o.state === 'Free') return `Free (${o.reason}${o.release ? ` ${o.release}` : ''})`;
  return o.reason === 'FoundInUse' ? 'Holding (FoundInUse)' : `Holding ${o.migration ?? '?'}`;
}
