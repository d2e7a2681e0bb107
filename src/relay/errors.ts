/**
 * Relay failures. Each code is also the condition reason the controller records, so a person reading
 * status learns what broke without reading logs.
 */
export type RelayCode =
  | 'PeerUnreachable'
  | 'PeerRefused'
  | 'StreamMismatch'
  | 'StreamAborted'
  /** A stream that moved nothing for the configured idle time (timeouts.streamIdle). */
  | 'StreamStalled'
  /** The target accepts only the digests its config allows (acceptDigests). */
  | 'DigestRefused'
  /** The peer's certificate does not name the agent of the node we meant (DESIGN.md, Trust). */
  | 'PeerIdentityMismatch'
  | 'DeviceReadFailed'
  | 'DeviceWriteFailed'
  | 'DigestUnavailable'
  | 'Cancelled';

export class RelayError extends Error {
  override readonly name = 'RelayError';
  constructor(readonly code: RelayCode, message: string, readonly status?: number) {
    super(message);
  }
}
