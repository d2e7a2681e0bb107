/**
 * Fault injection for the simulated driver. Faults come from the device's configuration and from
 * `<device dir>/faults.json`, re-read at every arc and session start, so a test can break a device
 * inside a running agent by writing one file.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { STATE_NAMES } from '../uapi.js';

const stateName = z.enum(STATE_NAMES as unknown as [string, ...string[]]);
const errnoName = z.string().regex(/^E[A-Z0-9]+$/, 'an errno name such as EIO or EINVAL');

export const arcFaultSchema = z.strictObject({
  /** "FROM>TO"; FROM may be "*". */
  arc: z.string().regex(/^(\*|[A-Z_0-9]+)>[A-Z_0-9]+$/, 'an arc written FROM>TO, e.g. RESUMING>STOP or *>STOP_COPY'),
  errno: errnoName.default('EIO'),
  /** Where the device lands: the arc's origin (default), or ERROR. */
  then: z.enum(['stay', 'ERROR']).default('stay'),
  /** How many times it fires; unset = every time. */
  times: z.number().int().positive().optional(),
});

/** An arc that takes `delayMs` and then succeeds: a slow driver, and a window a test can act in. */
export const slowArcSchema = z.strictObject({
  arc: z.string().regex(/^(\*|[A-Z_0-9]+)>[A-Z_0-9]+$/, 'an arc written FROM>TO, e.g. RESUMING>STOP or *>STOP_COPY'),
  delayMs: z.number().int().positive().max(600_000),
  times: z.number().int().positive().optional(),
});

export const streamFaultSchema = z.strictObject({
  stream: z.enum(['slow', 'slow-write', 'truncate', 'corrupt', 'error']),
  /** slow: the rate a save data_fd can be read at; slow-write: the rate a resume data_fd takes writes. */
  bytesPerSecond: z.number().positive().optional(),
  /** truncate/corrupt/error: the stream offset where it happens. */
  atByte: z.number().int().nonnegative().optional(),
  errno: errnoName.default('EIO'),
});

// A slow arc first: an object with delayMs is never an error fault.
export const faultSchema = z.union([slowArcSchema, arcFaultSchema, streamFaultSchema]);
export type Fault = z.infer<typeof faultSchema>;
export type ArcFault = z.infer<typeof arcFaultSchema>;
export type SlowArc = z.infer<typeof slowArcSchema>;
export type StreamFault = z.infer<typeof streamFaultSchema>;

export function isArcFault(f: Fault): f is ArcFault {
  return 'arc' in f && !('delayMs' in f);
}

export function isSlowArc(f: Fault): f is SlowArc {
  return 'delayMs' in f;
}

export function isStreamFault(f: Fault): f is StreamFault {
  return 'stream' in f;
}

export async function readFaultFile(path: string): Promise<Fault[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const parsed = z.array(faultSchema).safeParse(JSON.parse(text));
  if (!parsed.success) throw new Error(`${path}: ${z.prettifyError(parsed.error)}`);
  for (const f of parsed.data) {
    if ('arc' in f) {
      const [from, to] = f.arc.split('>') as [string, string];
      if (from !== '*') stateName.parse(from);
      stateName.parse(to);
    }
  }
  return parsed.data;
}

/** Picks the first arc fault matching FROM>TO, consuming one of its `times`. */
export function takeArcFault(faults: Fault[], used: Map<string, number>, from: string, to: string): ArcFault | undefined {
  return take(faults.filter(isArcFault), used, from, to);
}

/** Picks the first slow arc matching FROM>TO, consuming one of its `times`. */
export function takeSlowArc(faults: Fault[], used: Map<string, number>, from: string, to: string): SlowArc | undefined {
  return take(faults.filter(isSlowArc), used, from, to);
}

function take<F extends { arc: string; times?: number | undefined }>(faults: F[], used: Map<string, number>, from: string, to: string): F | undefined {
  for (const f of faults) {
    const [ff, ft] = f.arc.split('>');
    if (ft !== to || (ff !== '*' && ff !== from)) continue;
    // Faults are re-read from disk, so their identity is their content.
    const key = JSON.stringify(f);
    const n = used.get(key) ?? 0;
    if (f.times !== undefined && n >= f.times) continue;
    used.set(key, n + 1);
    return f;
  }
  return undefined;
}
