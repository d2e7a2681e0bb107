/**
 * The agent's control API: one zod schema per request gives the validation (an unknown field, a
 * wrong type, a bad name each get a 400 naming the field) and the TypeScript type the controller's
 * client sends. Every mutating request names its migration and an `op`: repeating the same op for
 * the same migration returns the recorded result instead of acting twice.
 */
import { z } from 'zod';
import { STATE_NAMES } from '../vfio/uapi.js';
import type { Occupancy } from '../api/types.js';

/** Kubernetes object names (DNS-1123 subdomain), which also keeps paths and file names safe. */
export const objectName = z.string().max(253).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a lowercase DNS name (a-z, 0-9, "-", ".")');
const opName = z.string().min(1).max(63).regex(/^[a-z0-9][-a-z0-9]*$/, 'must be a short lowercase id such as "prepare" or "commit-1"');
const ticket = z.string().regex(/^[A-Za-z0-9_-]{32,128}$/, 'must be a 32-128 character base64url ticket');
const stateName = z.enum(STATE_NAMES as unknown as [string, ...string[]]);

const base = { migration: objectName, op: opName };

export const setStateRequest = z.strictObject({ ...base, state: stateName });
export const resetRequest = z.strictObject({ ...base });
export const releaseRequest = z.strictObject({
  ...base,
  /**
   * First walk the device to STOP (a source whose state now runs on its target), in the same op and
   * the same journal write as the release: one fsync, not three.
   */
  stop: z.boolean().optional(),
});
export const receiveRequest = z.strictObject({
  ...base,
  ticket,
  /** The node whose agent will send; only its identity may open the stream. */
  sourceNode: objectName,
  /**
   * The commit to run the moment the stream is verified, without waiting to be asked: the controller
   * recorded that intent before it prepared the target. The same op id and parameters as the commit
   * request it sends later, which then answers what this one did.
   */
  commitOnVerify: z.strictObject({ op: opName, resume: z.boolean().optional() }).optional(),
});
export const sendRequest = z.strictObject({
  ...base,
  ticket,
  /** true: stream from PRE_COPY while the device runs; false: STOP_COPY. */
  precopy: z.boolean().default(false),
  /** Bytes per second; unset means no limit. */
  bandwidth: z.number().int().positive().optional(),
  target: z.strictObject({
    node: objectName,
    device: objectName,
    endpoint: z.string().regex(/^https:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$/, 'must be https://HOST:PORT'),
  }),
});
export const commitRequest = z.strictObject({
  ...base,
  /** Once committed, run the device (STOP -> RUNNING) in the same op: one round trip less of downtime. */
  resume: z.boolean().optional(),
});
/** A DeviceRelease, carried out by the device's agent: reset the device, and record it free. */
export const freeRequest = z.strictObject({
  op: opName,
  /** The DeviceRelease object: a repeat for the same one answers what the first did. */
  release: objectName,
  /** Who asked, as the DeviceRelease records it. */
  requestedBy: z.string().min(1).max(256).optional(),
});
export const cancelRequest = z.strictObject({ op: opName, reason: z.string().max(1024).optional() });

export type SetStateRequest = z.infer<typeof setStateRequest>;
export type ResetRequest = z.infer<typeof resetRequest>;
export type ReleaseRequest = z.infer<typeof releaseRequest>;
export type ReceiveRequest = z.infer<typeof receiveRequest>;
export type SendRequest = z.input<typeof sendRequest>;
export type CommitRequest = z.infer<typeof commitRequest>;
export type CancelRequest = z.infer<typeof cancelRequest>;
export type FreeRequest = z.infer<typeof freeRequest>;

export type SessionPhase = 'Waiting' | 'Streaming' | 'Sent' | 'Verified' | 'Committed' | 'Failed' | 'Cancelled' | 'Interrupted';

/** A send or receive session as GET /v1/migrations/:m reports it. */
export interface SessionView {
  readonly migration: string;
  readonly device: string;
  readonly role: 'source' | 'target';
  readonly phase: SessionPhase;
  readonly bytes: number;
  readonly digest?: string;
  /** Source: every byte left; the target may hold the whole state. */
  readonly allSent?: boolean;
  readonly peer: string;
  readonly startedAt: string;
  readonly finishedAt?: string;
  readonly error?: { readonly code: string; readonly message: string };
  readonly precopy?: { readonly initialBytes: number; readonly dirtyBytes: number };
  /** Source, while streaming: what the device still has to send (VFIO_DEVICE_FEATURE_MIG_DATA_SIZE). */
  readonly remainingBytes?: number;
}

export interface DeviceView {
  readonly name: string;
  readonly kind: 'simulated' | 'kernel';
  readonly flags: string[];
  readonly state: string;
  readonly migration?: string;
  readonly role?: 'source' | 'target';
  readonly step?: string;
  readonly stopCopyBytes?: number;
  /** What the device holds: only a Free one receives. */
  readonly occupancy?: Occupancy;
}
