/**
 * The migration state machine, pure: (step, what just happened) -> next step. Status.step is the
 * write-ahead log (DESIGN.md invariant 3): the controller records a step before it acts on it, and
 * after a restart it acts on the recorded step again, every agent op being idempotent.
 *
 * The one line that is never crossed backwards: once `Commit` is recorded the target may be running,
 * so the source never runs again unless the target has answered, definitively, that it did not commit.
 */
import type { Phase } from '../api/types.js';

export type Step =
  | 'Pending' | 'PrepareTarget' | 'StartSend' | 'Streaming' | 'StopCopy' | 'Commit' | 'ResumeTarget'
  | 'ReleaseSource' | 'RollBack' | 'Succeeded' | 'RolledBack' | 'Cancelled' | 'Failed';

export type Event =
  | { kind: 'ok' }
  | { kind: 'invalid'; reason: string; message: string }
  /** The action failed and the device side is known (the op answered, or nothing irreversible ran). */
  | { kind: 'failed'; reason: string; message: string }
  /** The action's outcome cannot be known (a timeout after the request may have landed). */
  | { kind: 'unknown'; reason: string; message: string }
  | { kind: 'streaming' }
  | { kind: 'converged' }
  | { kind: 'verified' }
  | { kind: 'cancel' }
  | { kind: 'timeout' }
  /** A group member waits at a barrier for its siblings: nothing failed, the step is asked again. */
  | { kind: 'waiting'; message: string }
  /** A sibling of the group failed: roll back too, while this member's target never ran. */
  | { kind: 'groupAbort'; reason: string; message: string }
  /**
   * The rollback found the target committed: armed to commit on its own verdict (status.commitOnVerify),
   * it verified the stream and ran before the rollback reached it. It is the runner: finish instead.
   */
  | { kind: 'committed'; message: string }
  /**
   * The target the controller picked refused to receive (DeviceOccupied: it was filled or given to a
   * pod after the controller read its DeviceNode). Nothing ran: pick again.
   */
  | { kind: 'repick'; message: string };

export interface Transition {
  readonly step: Step;
  /** Set when the migration has to be rolled back or has failed: why. */
  readonly failure?: { reason: string; message: string };
  /** A condition to show while the step is held (the outcome is unknown and will be asked again). */
  readonly blocked?: { reason: string; message: string };
  /** What a group member waits for at a barrier. */
  readonly waiting?: string;
  /** A rollback overtaken by the target's own commit: why, for the record; the failure is dropped. */
  readonly overtaken?: string;
}

const TERMINAL: ReadonlySet<Step> = new Set(['Succeeded', 'RolledBack', 'Cancelled', 'Failed']);
/** Steps after which the source may no longer run: the target may hold (and run) the state. */
const PAST_COMMIT: ReadonlySet<Step> = new Set(['Commit', 'ResumeTarget', 'ReleaseSource', 'Succeeded']);

export const isTerminal = (s: Step): boolean => TERMINAL.has(s);
export const pastCommit = (s: Step): boolean => PAST_COMMIT.has(s);

const FORWARD: Partial<Record<Step, Step>> = {
  Pending: 'PrepareTarget',
  PrepareTarget: 'StartSend',
  StartSend: 'Streaming',
  StopCopy: 'Streaming',
  Commit: 'ResumeTarget',
  ResumeTarget: 'ReleaseSource',
  ReleaseSource: 'Succeeded',
};

export function next(step: Step, ev: Event): Transition {
  if (TERMINAL.has(step)) return { step };
  if (ev.kind === 'cancel' || ev.kind === 'timeout') return stopRequested(step, ev.kind);
  switch (ev.kind) {
    case 'ok':
      if (step === 'RollBack') return { step: 'RolledBack' };
      return { step: FORWARD[step] ?? step };
    case 'invalid':
      return step === 'Pending' ? { step: 'Failed', failure: why(ev) } : { step: 'RollBack', failure: why(ev) };
    case 'failed':
      // Before the commit, any failure rolls back. After it, only the target's own definitive refusal
      // of the commit does; a failure to resume or release a committed target is held, not undone.
      if (step === 'RollBack') return { step: 'Failed', failure: why(ev) };
      if (step === 'Commit' || !pastCommit(step)) return { step: 'RollBack', failure: why(ev) };
      return { step, blocked: why(ev) };
    case 'unknown':
      return { step, blocked: why(ev) };
    case 'streaming':
      return { step: 'Streaming' };
    case 'converged':
      return { step: step === 'Streaming' ? 'StopCopy' : step };
    case 'verified':
      return { step: step === 'Streaming' ? 'Commit' : step };
    case 'waiting':
      return { step, waiting: ev.message };
    case 'committed':
      return step === 'RollBack' ? { step: 'Commit', overtaken: ev.message } : { step };
    case 'repick':
      return step === 'PrepareTarget' ? { step: 'Pending', waiting: ev.message } : { step };
    case 'groupAbort':
      // The reconciler sends this only while the member's target has not run: up to ResumeTarget a
      // committed target still sits in STOP, and its commit can be taken back (agent uncommit).
      if (step === 'Pending') return { step: 'Failed', failure: why(ev) };
      if (step === 'RollBack' || (pastCommit(step) && step !== 'Commit' && step !== 'ResumeTarget')) return { step };
      return { step: 'RollBack', failure: why(ev) };
  }
}

const why = (ev: { reason: string; message: string }) => ({ reason: ev.reason, message: ev.message });

/**
 * A cancel or timeout. Past the commit it changes nothing (rolling back could leave two runners): the
 * migration goes on to its end, and the status says the cancel came too late. During a rollback it is
 * already being done.
 */
function stopRequested(step: Step, why: 'cancel' | 'timeout'): Transition {
  if (pastCommit(step) || step === 'RollBack') return { step };
  if (step === 'Pending') return { step: why === 'cancel' ? 'Cancelled' : 'Failed', failure: failureOf(why) };
  return { step: 'RollBack', failure: failureOf(why) };
}

function failureOf(why: 'cancel' | 'timeout'): { reason: string; message: string } {
  return why === 'cancel'
    ? { reason: 'Cancelled', message: 'spec.cancel was set (or the DeviceMigration was deleted): rolled back, the source runs' }
    : { reason: 'Timeout', message: 'spec.limits.timeout passed before the target committed: rolled back, the source runs' };
}

/** The phase a person sees for a step. */
export function phaseOf(step: Step, precopy: boolean, failure?: { reason: string }): Phase {
  switch (step) {
    case 'Pending': return 'Pending';
    case 'PrepareTarget': case 'StartSend': return 'Preparing';
    case 'Streaming': return precopy ? 'PreCopy' : 'StopCopy';
    case 'StopCopy': return 'StopCopy';
    case 'Commit': case 'ResumeTarget': case 'ReleaseSource': return 'Resuming';
    // The reconciler shows RollBack under the phase it was in (it is not rolled back yet).
    case 'RollBack':
    case 'RolledBack': return failure?.reason === 'Cancelled' ? 'Cancelled' : 'RolledBack';
    default: return step;
  }
}
