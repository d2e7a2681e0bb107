import { planPath, planTable, nextState, PlanRefused, arcOpensDataFd } from '../../src/vfio/planner.js';
import { MigFlag, STATE_NAMES, type MigStateName } from '../../src/vfio/uapi.js';

const { STOP_COPY, P2P, PRE_COPY } = MigFlag;
const FLAG_SETS: Array<[string, number]> = [
  ['STOP_COPY', STOP_COPY],
  ['STOP_COPY+P2P', STOP_COPY | P2P],
  ['STOP_COPY+PRE_COPY', STOP_COPY | PRE_COPY],
  ['STOP_COPY+P2P+PRE_COPY', STOP_COPY | P2P | PRE_COPY],
];

/**
 * The arcs a driver must implement for each flag set, as the comment above vfio_mig_get_next_state
 * lists them. This is an independent oracle: the planner's table is not consulted.
 */
function driverArcs(flags: number): Set<string> {
  const arcs = ['RESUMING>STOP', 'STOP>RESUMING', 'STOP>STOP_COPY', 'STOP_COPY>STOP'];
  const p2p = (flags & P2P) !== 0;
  const pre = (flags & PRE_COPY) !== 0;
  if (p2p) arcs.push('RUNNING>RUNNING_P2P', 'RUNNING_P2P>RUNNING', 'RUNNING_P2P>STOP', 'STOP>RUNNING_P2P');
  else arcs.push('RUNNING>STOP', 'STOP>RUNNING');
  if (pre && !p2p) arcs.push('RUNNING>PRE_COPY', 'PRE_COPY>RUNNING', 'PRE_COPY>STOP_COPY');
  if (pre && p2p) {
    arcs.push('PRE_COPY>RUNNING', 'PRE_COPY>PRE_COPY_P2P', 'PRE_COPY_P2P>PRE_COPY', 'PRE_COPY_P2P>RUNNING_P2P',
      'PRE_COPY_P2P>STOP_COPY', 'RUNNING>PRE_COPY', 'RUNNING_P2P>PRE_COPY_P2P');
  }
  return new Set(arcs);
}

function supported(state: MigStateName, flags: number): boolean {
  if (state === 'ERROR') return false;
  if ((state === 'RUNNING_P2P' || state === 'PRE_COPY_P2P') && (flags & P2P) === 0) return false;
  if ((state === 'PRE_COPY' || state === 'PRE_COPY_P2P') && (flags & PRE_COPY) === 0) return false;
  return true;
}

function shortest(from: MigStateName, to: MigStateName, arcs: Set<string>): number {
  const dist = new Map<string, number>([[from, 0]]);
  const queue: string[] = [from];
  while (queue.length > 0) {
    const s = queue.shift()!;
    if (s === to) return dist.get(s)!;
    for (const a of arcs) {
      const [f, t] = a.split('>') as [string, string];
      if (f === s && !dist.has(t)) { dist.set(t, dist.get(s)! + 1); queue.push(t); }
    }
  }
  return Infinity;
}

describe('planner agrees with the kernel on all 256 (from, to, flags) cases', () => {
  const cases = FLAG_SETS.flatMap(([label, flags]) =>
    STATE_NAMES.flatMap((from) => STATE_NAMES.map((to) => [label, flags, from, to] as const)));

  it('covers 256 cases', () => expect(cases).toHaveLength(256));

  it.each(cases)('%s: %s -> %s', (_label, flags, from, to) => {
    const blocked = from === 'STOP_COPY' && (to === 'PRE_COPY' || to === 'PRE_COPY_P2P');
    if (!supported(from, flags) || !supported(to, flags) || blocked) {
      expect(() => planPath(from, to, flags)).toThrow(PlanRefused);
      return;
    }
    const path = planPath(from, to, flags);
    const arcs = driverArcs(flags);
    expect(path[0]).toBe(from);
    expect(path.at(-1)).toBe(to);
    for (let i = 1; i < path.length; i++) expect(arcs).toContain(`${path[i - 1]}>${path[i]}`);
    expect(path.length - 1).toBe(shortest(from, to, arcs));
  });
});

describe('the kernel\'s documented combination transitions (all flags)', () => {
  // Verbatim from the comment above vfio_mig_get_next_state(): the kernel's own choices where several
  // shortest paths exist.
  const documented = `
    PRE_COPY -> PRE_COPY_P2P -> STOP_COPY
    PRE_COPY -> RUNNING -> RUNNING_P2P
    PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP
    PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP -> RESUMING
    PRE_COPY_P2P -> RUNNING_P2P -> RUNNING
    PRE_COPY_P2P -> RUNNING_P2P -> STOP
    PRE_COPY_P2P -> RUNNING_P2P -> STOP -> RESUMING
    RESUMING -> STOP -> RUNNING_P2P
    RESUMING -> STOP -> RUNNING_P2P -> PRE_COPY_P2P
    RESUMING -> STOP -> RUNNING_P2P -> RUNNING
    RESUMING -> STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
    RESUMING -> STOP -> STOP_COPY
    RUNNING -> RUNNING_P2P -> PRE_COPY_P2P
    RUNNING -> RUNNING_P2P -> STOP
    RUNNING -> RUNNING_P2P -> STOP -> RESUMING
    RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY
    RUNNING_P2P -> RUNNING -> PRE_COPY
    RUNNING_P2P -> STOP -> RESUMING
    RUNNING_P2P -> STOP -> STOP_COPY
    STOP -> RUNNING_P2P -> PRE_COPY_P2P
    STOP -> RUNNING_P2P -> RUNNING
    STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
    STOP_COPY -> STOP -> RESUMING
    STOP_COPY -> STOP -> RUNNING_P2P
    STOP_COPY -> STOP -> RUNNING_P2P -> RUNNING`
    .trim().split('\n').map((l) => l.trim().split(' -> ') as MigStateName[]);

  it.each(documented.map((p) => [p.join(' -> '), p] as const))('%s', (_n, path) => {
    expect(planPath(path[0]!, path.at(-1)!, STOP_COPY | P2P | PRE_COPY)).toEqual(path);
  });
});

describe('flags change the walk as the kernel skips unsupported states', () => {
  it.each([
    [STOP_COPY, 'RUNNING', 'STOP_COPY', ['RUNNING', 'STOP', 'STOP_COPY']],
    [STOP_COPY | P2P, 'RUNNING', 'STOP_COPY', ['RUNNING', 'RUNNING_P2P', 'STOP', 'STOP_COPY']],
    [STOP_COPY | PRE_COPY, 'PRE_COPY', 'STOP_COPY', ['PRE_COPY', 'STOP_COPY']],
    [STOP_COPY | PRE_COPY, 'PRE_COPY', 'RESUMING', ['PRE_COPY', 'RUNNING', 'STOP', 'RESUMING']],
    [STOP_COPY | PRE_COPY, 'RESUMING', 'PRE_COPY', ['RESUMING', 'STOP', 'RUNNING', 'PRE_COPY']],
    [STOP_COPY, 'STOP_COPY', 'RUNNING', ['STOP_COPY', 'STOP', 'RUNNING']],
    [STOP_COPY, 'STOP', 'STOP', ['STOP']],
  ] as const)('flags %i: %s -> %s', (flags, from, to, path) => {
    expect(planPath(from, to, flags)).toEqual(path);
  });

  it('refuses STOP_COPY -> PRE_COPY, which hangs older kernels', () => {
    expect(() => nextState('STOP_COPY', 'PRE_COPY', STOP_COPY | PRE_COPY)).toThrow(/older kernels hang/);
  });

  it('refuses ERROR at either end with the way out', () => {
    expect(() => planPath('ERROR', 'RUNNING', STOP_COPY)).toThrow(/VFIO_DEVICE_RESET/);
    expect(() => planPath('RUNNING', 'ERROR', STOP_COPY)).toThrow(/cannot be requested/);
  });

  it('names the missing flag', () => {
    expect(() => planPath('RUNNING', 'PRE_COPY', STOP_COPY | P2P)).toThrow(/lack PRE_COPY/);
  });

  it('table has 64 entries with nulls exactly where refused', () => {
    const t = planTable(STOP_COPY | P2P | PRE_COPY);
    const entries = Object.values(t).flatMap((r) => Object.values(r));
    expect(entries).toHaveLength(64);
    expect(entries.filter((e) => e === null)).toHaveLength(8 + 7 + 2); // ERROR row, ERROR column, blocked
  });

  it('knows which arcs open a data_fd', () => {
    expect(arcOpensDataFd({ from: 'STOP', to: 'STOP_COPY' })).toBe('save');
    expect(arcOpensDataFd({ from: 'PRE_COPY_P2P', to: 'STOP_COPY' })).toBeNull();
    expect(arcOpensDataFd({ from: 'RUNNING', to: 'PRE_COPY' })).toBe('save');
    expect(arcOpensDataFd({ from: 'STOP', to: 'RESUMING' })).toBe('resume');
  });
});
