/**
 * The per-device journal on node-local disk (DESIGN.md invariant 3): which migration holds the device,
 * in which role, at which step, and the result of every op already done, so that a restarted agent
 * knows what it was doing and a repeated request returns the recorded answer instead of acting twice.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';

export interface OpRecord {
  readonly op: string;
  /** Hash of the request, so the same op id with other parameters is refused, not replayed. */
  readonly request: string;
  readonly status: number;
  readonly result: unknown;
  readonly at: string;
}

export interface JournalEntry {
  device: string;
  migration?: string;
  role?: 'source' | 'target';
  /** The last step started or finished, e.g. "send:streaming", "commit:intent", "commit:done". */
  step?: string;
  ops: Record<string, OpRecord>;
  updatedAt: string;
}

export function requestHash(body: unknown): string {
  return createHash('sha256').update(JSON.stringify(body)).digest('hex').slice(0, 32);
}

export class Journal {
  private readonly entries = new Map<string, JournalEntry>();
  /** Writes of one device's entry, in order: a send session's background steps and ops interleave. */
  private readonly writes = new Map<string, Promise<void>>();

  private constructor(private readonly dir: string) {}

  static async open(stateDir: string): Promise<Journal> {
    const dir = join(stateDir, 'journal');
    await mkdir(dir, { recursive: true });
    const j = new Journal(dir);
    for (const f of await readdir(dir)) {
      if (!f.endsWith('.json')) continue;
      const e = JSON.parse(await readFile(join(dir, f), 'utf8')) as JournalEntry;
      j.entries.set(e.device, e);
    }
    return j;
  }

  get(device: string): JournalEntry {
    return this.entries.get(device) ?? { device, ops: {}, updatedAt: new Date(0).toISOString() };
  }

  all(): JournalEntry[] {
    return [...this.entries.values()];
  }

  findOp(device: string, migration: string, op: string): OpRecord | undefined {
    return this.get(device).ops[`${migration}/${op}`];
  }

  /** Records a step; durable (fsync) before it returns, because callers act on it next. */
  async step(device: string, change: Partial<Pick<JournalEntry, 'migration' | 'role' | 'step'>>): Promise<void> {
    await this.update(device, (e) => ({ ...e, ...change }));
  }

  /** Resolves when every write of `device` started so far has finished (or failed). */
  async settled(device: string): Promise<void> {
    await this.writes.get(device);
  }

  /** Records an op's answer, and with it (one fsync for both) the step the op ended on. */
  async recordOp(device: string, migration: string, rec: OpRecord, step?: string): Promise<void> {
    await this.update(device, (e) => ({ ...e, ...(step ? { step } : {}), ops: { ...e.ops, [`${migration}/${rec.op}`]: rec } }));
  }

  /**
   * The migration let go of the device: ops of other migrations are dropped, this one's kept for
   * replays (with `rec`, the answer of the op that released it, in the same write).
   */
  async release(device: string, migration: string, rec?: OpRecord): Promise<void> {
    await this.update(device, (e) => ({
      device, step: `released:${migration}`,
      ops: { ...Object.fromEntries(Object.entries(e.ops).filter(([k]) => k.startsWith(`${migration}/`))), ...(rec ? { [`${migration}/${rec.op}`]: rec } : {}) },
    }));
  }

  /** Applies `change` to the entry as it is when the previous write of this device has finished. */
  private update(device: string, change: (e: JournalEntry) => Omit<JournalEntry, 'updatedAt'>): Promise<void> {
    const run = (this.writes.get(device) ?? Promise.resolve()).then(() =>
      this.write({ ...change(this.get(device)), updatedAt: new Date().toISOString() }));
    this.writes.set(device, run.catch(() => undefined));
    return run;
  }

  private async write(e: JournalEntry): Promise<void> {
    const path = join(this.dir, `${e.device}.json`);
    const tmp = `${path}.tmp`;
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(JSON.stringify(e, null, 2));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    this.entries.set(e.device, e);
  }
}
