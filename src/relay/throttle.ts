/** A per-session bandwidth limit: the sender waits until the bytes it has sent are within the rate. */
import { setTimeout as sleep } from 'node:timers/promises';

export class Throttle {
  private sent = 0;
  private readonly start: number;

  constructor(private readonly bytesPerSecond: number | undefined, private readonly now: () => number = Date.now) {
    this.start = now();
  }

  /**
   * How much to send at a time: a tenth of a second's worth (16 KiB at least), so a slow limit
   * sends a little often, not a chunk after a long silence that the target would take for a stall.
   */
  get slice(): number {
    return this.bytesPerSecond ? Math.max(16 * 1024, Math.floor(this.bytesPerSecond / 10)) : Number.POSITIVE_INFINITY;
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    this.sent += bytes;
    if (!this.bytesPerSecond) return;
    const due = this.start + (this.sent / this.bytesPerSecond) * 1000;
    const wait = due - this.now();
    if (wait > 1) await sleep(wait, undefined, signal ? { signal } : {});
  }
}
