/**
 * A key-based work queue: adds coalesce, one worker per key at a time (a key added while it is being
 * worked on runs once more afterwards), per-key exponential backoff on failure, forgotten on success.
 */
export interface QueueOptions {
  readonly workers: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly setTimer?: (fn: () => void, ms: number) => { unref?: () => void; ref?: () => void } | NodeJS.Timeout;
}

export type Handler = (key: string) => Promise<{ requeueAfterMs?: number } | void>;

export class WorkQueue {
  private readonly queued = new Set<string>();
  private readonly order: string[] = [];
  private readonly active = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private running = 0;
  private stopped = false;

  constructor(private readonly handle: Handler, private readonly opts: QueueOptions, private readonly onError: (key: string, e: unknown) => void) {}

  add(key: string): void {
    if (this.stopped) return;
    if (this.active.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.order.push(key);
    this.pump();
  }

  addAfter(key: string, ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timers.get(key));
    const t = setTimeout(() => { this.timers.delete(key); this.add(key); }, ms);
    t.unref();
    this.timers.set(key, t);
  }

  /** The delay before the next try of a failing key: base * 2^failures, capped. */
  backoff(key: string): number {
    const n = this.failures.get(key) ?? 0;
    return Math.min(this.opts.baseDelayMs * 2 ** n, this.opts.maxDelayMs);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }

  get depth(): number {
    return this.order.length;
  }

  private pump(): void {
    while (this.running < this.opts.workers && this.order.length > 0) {
      const key = this.order.shift()!;
      this.queued.delete(key);
      this.active.add(key);
      this.running++;
      void this.work(key);
    }
  }

  private async work(key: string): Promise<void> {
    try {
      const r = await this.handle(key);
      this.failures.delete(key);
      if (r?.requeueAfterMs !== undefined) this.addAfter(key, r.requeueAfterMs);
    } catch (e) {
      this.onError(key, e);
      const delay = this.backoff(key);
      this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
      this.addAfter(key, delay);
    } finally {
      this.active.delete(key);
      this.running--;
      if (this.dirty.delete(key)) this.add(key);
      this.pump();
    }
  }
}
