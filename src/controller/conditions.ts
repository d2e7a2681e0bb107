/** Conditions as Kubernetes keeps them: lastTransitionTime moves only when a condition's status does. */
import type { Condition } from '../api/types.js';

export function stamped(previous: Condition[] | undefined, wanted: Array<Omit<Condition, 'lastTransitionTime'>>, generation: number | undefined, now: number): Condition[] {
  const at = new Date(now).toISOString();
  return wanted.map((c) => {
    const prev = previous?.find((x) => x.type === c.type);
    return { ...c, lastTransitionTime: prev && prev.status === c.status ? prev.lastTransitionTime : at, ...(generation ? { observedGeneration: generation } : {}) };
  });
}
