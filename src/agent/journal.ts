/**
 * The per-device journal on node-local disk (DESIGN.md invariant 3): which migration holds the device,
 * in which role, at which step, and the result of every op already done, so that a restarted agent
 * knows what it was doing and a repeated request returns the recorded answer instead of acting twice.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { Occupancy } from '../api/types.js';

/**
 * What a device holds, as this agent records it (DESIGN.md invariant 7): free to receive, or holding a
 * workload's state. It outlives every migration, and every restart of the agent and the controller.
 * (Pods the kubelet allocated the device to are read live, not recorded: see the PodResources API.)
 */
export type OccupancyRecord = Omit<Occupancy, 'pods' | 'state'> & { state: 'Free' | 'Holding' };

/** Op records of DeviceReleases are kept under this prefix (their key is `DeviceRelease/<name>/<op>`). */
export const RELEASE_KEY = 'DeviceRelease/';
/** How many DeviceReleases' answers a device keeps for replays, past the migrations that come and go. */
const KEPT_RELEASES = 8;

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
  /** Unset only before the agent first saw the device (then it records Spare or FoundInUse). */
  occupancy?: OccupancyRecord;
  ops: Record<string, OpRecord>;
  updatedAt: string;
}

/** A journal write's changes besides an op's answer: the step, and what the device now holds. */
export type EntryChange = Partial<Pick<JournalEntry, 'migration' | 'role' | 'step' | 'occupancy'>>;

function defined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export function requestHash(body: unknown): string {
  return createHash('sha256').update(JSON.stringify(body)).digest('hex').slice(0, 32);
}

export class Journal {
  private readonly entries = new Map<string, JournalEntry>();
  /** Writes of one device's entry, in order: a send session's background steps and ops interleave. */
  private readonly writes = new Map<string, Promise<void>>();

  /** Called after a write that changed what a device holds (the DeviceNode is published again). */
  onOccupancy: ((device: string) => void) | undefined;

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

  /** Records a step (and what the device holds); durable (fsync) before it returns, because callers act on it next. */
  async step(device: string, change: EntryChange): Promise<void> {
    await this.update(device, (e) => ({ ...e, ...change }));
  }

  /** Resolves when every write of `device` started so far has finished (or failed). */
  async settled(device: string): Promise<void> {
    await this.writes.get(device);
  }

  /** Records an op's answer, and with it (one fsync for all) the step the op ended on and what the device holds. */
  async recordOp(device: string, migration: string, rec: OpRecord, change: Pick<EntryChange, 'step' | 'occupancy'> = {}): Promise<void> {
    await this.update(device, (e) => ({ ...e, ...defined(change), ops: { ...e.ops, [`${migration}/${rec.op}`]: rec } }));
  }

  /**
   * The migration let go of the device: ops of other migrations are dropped, this one's kept for
   * replays (with `rec`, the answer of the op that released it, in the same write), and so are the
   * last DeviceReleases' (a release is done once per object, whatever migrations came since). What
   * the device holds stays, or becomes `occupancy`.
   */
  async release(device: string, migration: string, rec?: OpRecord, occupancy?: OccupancyRecord): Promise<void> {
    await this.update(device, (e) => {
      const releases = Object.entries(e.ops).filter(([k]) => k.startsWith(RELEASE_KEY)).slice(-KEPT_RELEASES);
      return {
        device, step: `released:${migration}`, ...(occupancy ?? e.occupancy ? { occupancy: occupancy ?? e.occupancy } : {}),
        ops: {
          ...Object.fromEntries(releases),
          ...Object.fromEntries(Object.entries(e.ops).filter(([k]) => k.startsWith(`${migration}/`))), ...(rec ? { [`${migration}/${rec.op}`]: rec } : {}),
        },
      };
    });
  }

  /** Applies `change` to the entry as it is when the previous write of this device has finished. */
  private update(device: string, change: (e: JournalEntry) => Omit<JournalEntry, 'updatedAt'>): Promise<void> {
    const run = (this.writes.get(device) ?? Promise.resolve()).then(async () => {
      const before = this.get(device).occupancy;
      const next = { ...change(this.get(device)), updatedAt: new Date().toISOString() };
      await this.write(next);
      if (JSON.stringify(before) !== JSON.stringify(next.occupancy)) this.onOccupancy?.(device);
    });
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
