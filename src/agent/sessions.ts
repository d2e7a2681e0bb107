/** Send and receive sessions: one per (migration, device), as GET /v1/migrations/:m reports them. */
import type { ResumeStream } from '../vfio/device.js';
import type { SessionPhase, SessionView } from '../agentapi/types.js';

interface Common {
  readonly migration: string;
  readonly device: string;
  phase: SessionPhase;
  bytes: number;
  digest?: string;
  readonly startedAt: string;
  finishedAt?: string;
  error?: { code: string; message: string };
  readonly abort: AbortController;
}

export interface SendSession extends Common {
  readonly role: 'source';
  readonly targetNode: string;
  readonly targetEndpoint: string;
  allSent: boolean;
  /** The whole send, its journal step and the data_fd's close included. */
  done?: Promise<void>;
  /** Settles the moment the session's verdict is known (finish): what a long poll waits for. */
  readonly ended: Deferred;
}

export interface ReceiveSession extends Common {
  readonly role: 'target';
  readonly sourceNode: string;
  readonly ticket: string;
  ticketUsed: boolean;
  readonly resume: ResumeStream;
  /** The commit op to run as soon as the stream is verified (see ReceiveRequest.commitOnVerify). */
  readonly commitOnVerify?: { op: string; resume?: boolean | undefined };
  /** That commit while it runs: a draining agent waits for it. */
  committing?: Promise<unknown>;
}

export type Session = SendSession | ReceiveSession;

export interface Deferred { readonly promise: Promise<void>; readonly resolve: () => void }

export function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => { resolve = r; });
  return { promise, resolve };
}

export class SessionTable {
  private readonly sessions = new Map<string, Session>();

  get(migration: string, device: string): Session | undefined {
    return this.sessions.get(`${migration}/${device}`);
  }

  forMigration(migration: string): Session[] {
    return [...this.sessions.values()].filter((s) => s.migration === migration);
  }

  forDevice(device: string): Session | undefined {
    return [...this.sessions.values()].find((s) => s.device === device && isActive(s));
  }

  put(s: Session): void {
    this.sessions.set(`${s.migration}/${s.device}`, s);
  }

  all(): Session[] {
    return [...this.sessions.values()];
  }

  active(): Session[] {
    return [...this.sessions.values()].filter(isActive);
  }
}

export function isActive(s: Session): boolean {
  return s.phase === 'Waiting' || s.phase === 'Streaming';
}

export function finish(s: Session, phase: SessionPhase, error?: { code: string; message: string }): void {
  s.phase = phase;
  s.finishedAt = new Date().toISOString();
  if (error) s.error = error;
  if (s.role === 'source') s.ended.resolve();
}

export function viewOf(s: Session): SessionView {
  return {
    migration: s.migration,
    device: s.device,
    role: s.role,
    phase: s.phase,
    bytes: s.bytes,
    ...(s.digest ? { digest: s.digest } : {}),
    ...(s.role === 'source' ? { allSent: s.allSent } : {}),
    peer: s.role === 'source' ? s.targetNode : s.sourceNode,
    startedAt: s.startedAt,
    ...(s.finishedAt ? { finishedAt: s.finishedAt } : {}),
    ...(s.error ? { error: s.error } : {}),
  };
}
