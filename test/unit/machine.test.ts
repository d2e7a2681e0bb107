import { next, pastCommit, phaseOf, type Event, type Step } from '../../src/controller/machine.js';

const ok: Event = { kind: 'ok' };
const failed: Event = { kind: 'failed', reason: 'ArcFailed', message: 'x' };
const unknown: Event = { kind: 'unknown', reason: 'OutcomeUnknown', message: 'timeout' };
const abort: Event = { kind: 'groupAbort', reason: 'GroupRolledBack', message: 'member m-1 failed' };

describe('migration state machine', () => {
  const rows: Array<[Step, Event, Step, string?]> = [
    ['Pending', ok, 'PrepareTarget'],
    ['Pending', { kind: 'invalid', reason: 'DeviceNotFound', message: 'x' }, 'Failed', 'DeviceNotFound'],
    ['PrepareTarget', ok, 'StartSend'],
    ['PrepareTarget', failed, 'RollBack', 'ArcFailed'],
    ['StartSend', ok, 'Streaming'],
    ['StartSend', failed, 'RollBack', 'ArcFailed'],
    ['Streaming', { kind: 'streaming' }, 'Streaming'],
    ['Streaming', { kind: 'converged' }, 'StopCopy'],
    ['StopCopy', ok, 'Streaming'],
    ['Streaming', { kind: 'verified' }, 'Commit'],
    ['Streaming', failed, 'RollBack', 'ArcFailed'],
    ['Commit', ok, 'ResumeTarget'],
    ['Commit', failed, 'RollBack', 'ArcFailed'],
    ['ResumeTarget', ok, 'ReleaseSource'],
    ['ReleaseSource', ok, 'Succeeded'],
    ['RollBack', ok, 'RolledBack'],
    ['RollBack', failed, 'Failed', 'ArcFailed'],
    ['Pending', { kind: 'cancel' }, 'Cancelled', 'Cancelled'],
    ['Streaming', { kind: 'cancel' }, 'RollBack', 'Cancelled'],
    ['PrepareTarget', { kind: 'timeout' }, 'RollBack', 'Timeout'],
    ['Succeeded', failed, 'Succeeded'],
    // Groups: a waiting member stays; a sibling's failure rolls it back while its target never ran.
    ['StartSend', { kind: 'waiting', message: 'w' }, 'StartSend'],
    ['Commit', { kind: 'waiting', message: 'w' }, 'Commit'],
    ['Pending', abort, 'Failed', 'GroupRolledBack'],
    ['StartSend', abort, 'RollBack', 'GroupRolledBack'],
    ['Streaming', abort, 'RollBack', 'GroupRolledBack'],
    ['Commit', abort, 'RollBack', 'GroupRolledBack'],
    ['ResumeTarget', abort, 'RollBack', 'GroupRolledBack'],
    ['ReleaseSource', abort, 'ReleaseSource'],
    ['RollBack', abort, 'RollBack'],
    ['RolledBack', abort, 'RolledBack'],
    // A target the controller picked refused (it was filled meanwhile): nothing ran, pick again.
    ['PrepareTarget', { kind: 'repick', message: 'r' }, 'Pending'],
    ['Streaming', { kind: 'repick', message: 'r' }, 'Streaming'],
  ];
  it.each(rows.map(([s, e, w, r]) => [s, e, w, r ?? null] as const))('%s + %j -> %s', (step, ev, want, reason) => {
    const t = next(step, ev);
    expect(t.step).toBe(want);
    expect(t.failure?.reason ?? null).toBe(reason);
  });

  it('a repick says why it picks again, and fails nothing', () => {
    expect(next('PrepareTarget', { kind: 'repick', message: 'sim-0 refused' })).toEqual({ step: 'Pending', waiting: 'sim-0 refused' });
  });

  it('a waiting member says what it waits for', () => {
    expect(next('Commit', { kind: 'waiting', message: 'waiting for g-1' })).toEqual({ step: 'Commit', waiting: 'waiting for g-1' });
  });

  it('an unknown outcome holds the step with a condition, at every step', () => {
    for (const s of ['PrepareTarget', 'StartSend', 'Commit', 'ResumeTarget', 'RollBack'] as Step[]) {
      expect(next(s, unknown)).toEqual({ step: s, blocked: { reason: 'OutcomeUnknown', message: 'timeout' } });
    }
  });

  it('never lets the source run once the commit is recorded: failures are held, cancel is refused', () => {
    for (const s of ['Commit', 'ResumeTarget', 'ReleaseSource'] as Step[]) {
      if (s !== 'Commit') expect(next(s, failed)).toEqual({ step: s, blocked: { reason: 'ArcFailed', message: 'x' } });
      // Refused without holding the step: the migration goes on to its end (it used to block forever).
      expect(next(s, { kind: 'cancel' })).toEqual({ step: s });
      expect(next(s, { kind: 'timeout' })).toEqual({ step: s });
    }
    expect(pastCommit('Commit')).toBe(true);
    expect(pastCommit('Streaming')).toBe(false);
  });

  it('a rollback that finds the target committed (armed, it ran on its own verdict) finishes instead', () => {
    const committed = { kind: 'committed', message: 'the target committed first' } as const;
    expect(next('RollBack', committed)).toEqual({ step: 'Commit', overtaken: 'the target committed first' });
    // Anywhere else the event changes nothing: only a rollback asks the target to give the state up.
    for (const s of ['Streaming', 'Commit', 'ResumeTarget', 'RolledBack'] as Step[]) expect(next(s, committed)).toEqual({ step: s });
  });

  it('phases for people', () => {
    expect(phaseOf('Streaming', true)).toBe('PreCopy');
    expect(phaseOf('Streaming', false)).toBe('StopCopy');
    expect(phaseOf('Commit', false)).toBe('Resuming');
    expect(phaseOf('RolledBack', false, { reason: 'Cancelled' })).toBe('Cancelled');
    expect(phaseOf('RolledBack', false, { reason: 'ArcFailed' })).toBe('RolledBack');
  });
});
