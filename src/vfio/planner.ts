/**
 * The FSM planner: for (current, target, device flags), the exact arcs the kernel walks.
 *
 * A driver's migration_set_state() calls vfio_mig_get_next_state() (drivers/vfio/vfio_main.c) in a
 * loop until it reaches the requested state; each call returns one arc. The table below is the
 * kernel's `vfio_from_fsm_table` and `state_flags_table`, transcribed as data; `nextState` follows the
 * same rules: both ends must be supported by the device's flags, and states the device lacks are
 * skipped by looking up the next hop from them toward the target.
 */
import { MigFlag, MigState, STATE_NAMES, type MigStateName } from './uapi.js';

const { STOP_COPY, P2P, PRE_COPY } = MigFlag;

/** The flags a state needs. ERROR needs every bit, so no device "supports" it as an end. */
const STATE_FLAGS: Readonly<Record<MigStateName, number>> = {
  ERROR: ~0 >>> 0,
  STOP: STOP_COPY,
  RUNNING: STOP_COPY,
  STOP_COPY: STOP_COPY,
  RESUMING: STOP_COPY,
  RUNNING_P2P: STOP_COPY | P2P,
  PRE_COPY: STOP_COPY | PRE_COPY,
  PRE_COPY_P2P: STOP_COPY | P2P | PRE_COPY,
};

type Row = Readonly<Record<MigStateName, MigStateName>>;
const row = (
  STOP: MigStateName, RUNNING: MigStateName, STOP_COPY: MigStateName, RESUMING: MigStateName,
  RUNNING_P2P: MigStateName, PRE_COPY: MigStateName, PRE_COPY_P2P: MigStateName,
): Row => ({ ERROR: 'ERROR', STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P });

/** NEXT[from][to]: the next hop from `from` toward `to` when the device supports every state. */
const NEXT: Readonly<Record<MigStateName, Row>> = {
  //                 ->STOP         ->RUNNING      ->STOP_COPY      ->RESUMING     ->RUNNING_P2P  ->PRE_COPY     ->PRE_COPY_P2P
  STOP: row('STOP', 'RUNNING_P2P', 'STOP_COPY', 'RESUMING', 'RUNNING_P2P', 'RUNNING_P2P', 'RUNNING_P2P'),
  RUNNING: row('RUNNING_P2P', 'RUNNING', 'RUNNING_P2P', 'RUNNING_P2P', 'RUNNING_P2P', 'PRE_COPY', 'RUNNING_P2P'),
  PRE_COPY: row('RUNNING', 'RUNNING', 'PRE_COPY_P2P', 'RUNNING', 'RUNNING', 'PRE_COPY', 'PRE_COPY_P2P'),
  PRE_COPY_P2P: row('RUNNING_P2P', 'RUNNING_P2P', 'STOP_COPY', 'RUNNING_P2P', 'RUNNING_P2P', 'PRE_COPY', 'PRE_COPY_P2P'),
  // STOP_COPY -> PRE_COPY / PRE_COPY_P2P is ERROR: blocked. Kernels before the 2026 fix spin forever on it.
  STOP_COPY: row('STOP', 'STOP', 'STOP_COPY', 'STOP', 'STOP', 'ERROR', 'ERROR'),
  RESUMING: row('STOP', 'STOP', 'STOP', 'RESUMING', 'STOP', 'STOP', 'STOP'),
  RUNNING_P2P: row('STOP', 'RUNNING', 'STOP', 'STOP', 'RUNNING_P2P', 'RUNNING', 'PRE_COPY_P2P'),
  ERROR: row('ERROR', 'ERROR', 'ERROR', 'ERROR', 'ERROR', 'ERROR', 'ERROR'),
};

export function supportsState(state: MigStateName, flags: number): boolean {
  const need = STATE_FLAGS[state];
  return ((need & flags) >>> 0) === need;
}

export class PlanRefused extends Error {
  override readonly name = 'PlanRefused';
  /** The errno the kernel answers with: every refusal of vfio_mig_get_next_state is EINVAL. */
  readonly errno = 'EINVAL';
  constructor(readonly from: MigStateName, readonly to: MigStateName, readonly why: string) {
    super(`${from} -> ${to} refused: ${why}`);
  }
}

/** One call of vfio_mig_get_next_state: the next state on the way from `cur` to `target`. */
export function nextState(cur: MigStateName, target: MigStateName, flags: number): MigStateName {
  if (!supportsState(cur, flags)) {
    throw new PlanRefused(cur, target, cur === 'ERROR'
      ? 'a device in ERROR must be reset (VFIO_DEVICE_RESET) first'
      : `the device does not support ${cur} (its flags lack ${missingFlags(cur, flags)})`);
  }
  if (!supportsState(target, flags)) {
    throw new PlanRefused(cur, target, target === 'ERROR'
      ? 'ERROR cannot be requested'
      : `the device does not support ${target} (its flags lack ${missingFlags(target, flags)})`);
  }
  let next = NEXT[cur][target];
  // States the device lacks are skipped: the hop continues from them toward the target.
  // ERROR "lacks" every flag, so the kernel's loop never ends there; we stop and refuse instead.
  while (next !== 'ERROR' && !supportsState(next, flags)) next = NEXT[next][target];
  if (next === 'ERROR') {
    throw new PlanRefused(cur, target, `the kernel has no path from ${cur} to ${target}` +
      (cur === 'STOP_COPY' ? ' (older kernels hang on it; stop the save session and resume first)' : ''));
  }
  return next;
}

/** The states visited from `from` to `to`, both included: ["RUNNING", "RUNNING_P2P", "STOP"]. */
export function planPath(from: MigStateName, to: MigStateName, flags: number): MigStateName[] {
  const path: MigStateName[] = [from];
  let cur = from;
  if (from === to) nextState(from, to, flags); // validates both ends, as the kernel would
  while (cur !== to) {
    cur = nextState(cur, to, flags);
    path.push(cur);
    if (path.length > STATE_NAMES.length) throw new PlanRefused(from, to, 'the walk does not converge');
  }
  return path;
}

export interface Arc {
  readonly from: MigStateName;
  readonly to: MigStateName;
}

export function planArcs(from: MigStateName, to: MigStateName, flags: number): Arc[] {
  const path = planPath(from, to, flags);
  return path.slice(1).map((s, i) => ({ from: path[i] as MigStateName, to: s }));
}

/** Every (from, to) pair for one flag set: the path, or null where the kernel refuses. */
export function planTable(flags: number): Record<MigStateName, Record<MigStateName, MigStateName[] | null>> {
  const out = {} as Record<MigStateName, Record<MigStateName, MigStateName[] | null>>;
  for (const from of STATE_NAMES) {
    const r = {} as Record<MigStateName, MigStateName[] | null>;
    for (const to of STATE_NAMES) {
      try {
        r[to] = planPath(from, to, flags);
      } catch (e) {
        if (!(e instanceof PlanRefused)) throw e;
        r[to] = null;
      }
    }
    out[from] = r;
  }
  return out;
}

/** Arcs that open a data transfer session and hand back a new data_fd. */
export function arcOpensDataFd(arc: Arc): 'save' | 'resume' | null {
  if (arc.to === 'RESUMING') return 'resume';
  if (arc.to === 'STOP_COPY' && arc.from === 'STOP') return 'save';
  if ((arc.to === 'PRE_COPY' && arc.from === 'RUNNING') || (arc.to === 'PRE_COPY_P2P' && arc.from === 'RUNNING_P2P')) {
    return 'save';
  }
  return null;
}

function missingFlags(state: MigStateName, flags: number): string {
  const need = STATE_FLAGS[state] & ~flags;
  const names = Object.entries(MigFlag).filter(([, bit]) => (need & bit) !== 0).map(([n]) => n);
  return names.join('+');
}

export const ALL_STATES = STATE_NAMES;
export { MigState };
