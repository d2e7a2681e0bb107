/**
 * The agent's coded errors: each code is the `error.code` of the HTTP answer and, upstream, the
 * condition reason the controller records.
 */
export type AgentErrorCode =
  | 'BadRequest' | 'Unauthenticated' | 'Forbidden' | 'NotFound' | 'MethodNotAllowed' | 'UnsupportedMediaType'
  | 'PayloadTooLarge' | 'Draining' | 'DeviceBusy' | 'OpConflict' | 'ArcFailed' | 'DeviceError' | 'NoSession'
  | 'NotVerified' | 'UseCommit' | 'TicketRefused' | 'TooManySessions' | 'OutcomeUnknown' | 'AlreadyCommitted' | 'StreamMismatch'
  | 'StreamAborted' | 'DeviceWriteFailed' | 'NotCommitted' | 'TargetRan' | 'DeviceOccupied' | 'DeviceAllocated' | 'PodResourcesUnavailable'
  | 'RequestTimeout' | 'DigestRefused' | 'Internal';

export class AgentError extends Error {
  override readonly name = 'AgentError';
  constructor(readonly status: number, readonly code: AgentErrorCode, message: string, readonly extra: Record<string, unknown> = {}) {
    super(message);
  }
}

export const notFound = (what: string) => new AgentError(404, 'NotFound', what);
export const badRequest = (msg: string) => new AgentError(400, 'BadRequest', msg);
