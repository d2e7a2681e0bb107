import { WorkQueue } from '../../src/controller/queue.js';

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe('work queue', () => {
  it('coalesces adds and runs one worker per key, once more if added while running', async () => {
    const runs: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => { release = r; });
    const q = new WorkQueue(async (k) => { runs.push(k); if (runs.length === 1) await gate; }, { workers: 4, baseDelayMs: 10, maxDelayMs: 100 }, () => undefined);
    q.add('a'); q.add('a'); q.add('b');
    await tick();
    expect(runs).toEqual(['a', 'b']);
    q.add('a'); q.add('a');
    await tick();
    expect(runs).toEqual(['a', 'b']);
    release();
    await tick(20);
    expect(runs).toEqual(['a', 'b', 'a']);
    q.stop();
  });

  it('backs off per key exponentially and forgets on success', async () => {
    let n = 0;
    const errors: string[] = [];
    const q = new WorkQueue(async () => { n++; if (n < 4) throw new Error(`try ${n}`); }, { workers: 1, baseDelayMs: 10, maxDelayMs: 25 }, (_k, e) => errors.push((e as Error).message));
    q.add('x');
    await tick(3);
    expect(q.backoff('x')).toBe(20);
    await tick(150);
    expect(n).toBe(4);
    expect(errors).toEqual(['try 1', 'try 2', 'try 3']);
    expect(q.backoff('x')).toBe(10);
    q.stop();
  });
});
