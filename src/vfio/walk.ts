/**
 * Walking the FSM one arc at a time. The kernel would walk a combination transition itself inside one
 * SET, but then a failure could not be placed on an arc and no arc could be timed; so every backend
 * asks the planner for the arcs and issues them singly, as QEMU's unwinding expects.
 */
import { DeviceError, type ArcResult, type DataStream, type SetStateResult } from './device.js';
import { PlanRefused, planArcs, type Arc } from './planner.js';
import type { MigStateName } from './uapi.js';

/** What a backend provides to be walked: its flags, its current state, and one arc. */
export interface ArcStepper {
  readonly flags: number;
  current(): Promise<MigStateName>;
  /** Performs exactly one arc; returns the data stream the arc opened, if any; throws DeviceError. */
  step(arc: Arc): Promise<DataStream | undefined>;
}

export interface Clock {
  now(): number;
}
export const systemClock: Clock = { now: () => Date.now() };

export async function walkTo(stepper: ArcStepper, target: MigStateName, clock: Clock = systemClock): Promise<SetStateResult> {
  const from = await stepper.current();
  let arcs: Arc[];
  try {
    arcs = planArcs(from, target, stepper.flags);
  } catch (e) {
    if (!(e instanceof PlanRefused)) throw e;
    return { arcs: [], state: from, error: new DeviceError('EINVAL', e.message) };
  }
  const done: ArcResult[] = [];
  let stream: DataStream | undefined;
  for (const arc of arcs) {
    const start = clock.now();
    try {
      stream = (await stepper.step(arc)) ?? stream;
      done.push(arcResult(arc, start, clock.now()));
    } catch (e) {
      if (!(e instanceof DeviceError)) throw e;
      done.push({ ...arcResult(arc, start, clock.now()), result: 'Failed', errno: e.errno, message: e.message });
      return { arcs: done, state: await stepper.current(), error: e, ...(stream ? { stream } : {}) };
    }
  }
  return { arcs: done, state: target, ...(stream ? { stream } : {}) };
}

function arcResult(arc: Arc, start: number, end: number): ArcResult {
  return {
    from: arc.from,
    to: arc.to,
    startedAt: new Date(start).toISOString(),
    durationMs: end - start,
    result: 'Succeeded',
  };
}
