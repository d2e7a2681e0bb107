/**
 * HTTP/2 settings for bulk transfer. node:http2 defaults to 64 KiB flow-control windows, which caps a
 * stream at one window per round trip; a device's state is gigabytes, so windows, frame size and
 * session memory are raised on both ends (DESIGN.md, Library facts).
 */
import type { ClientSessionOptions, SecureServerOptions, Settings } from 'node:http2';

/**
 * 16 MiB: many times the bandwidth-delay product of a data-centre link (25 Gbit/s x 1 ms is 3 MiB).
 * A target that writes slower than the source sends holds a full window: at 32 MiB the target's
 * peak RSS in bench:relay was 143-154 MB, at 16 MiB 113-117 MB, and just as fast.
 */
export const WINDOW = 16 * 2 ** 20;
export const FRAME = 2 ** 24 - 1;
export const CHUNK = 2 ** 20;

export const bulkSettings: Settings = {
  initialWindowSize: WINDOW,
  maxFrameSize: FRAME,
  enablePush: false,
};

/** Memory a session may use before node:http2 refuses new streams, in MiB. */
const SESSION_MEMORY_MIB = 256;

export function serverOptions(tls: TlsMaterial): SecureServerOptions {
  return {
    ...tls,
    settings: bulkSettings,
    maxSessionMemory: SESSION_MEMORY_MIB,
    allowHTTP1: false,
    // Every peer shows a certificate from our CA; the handler decides what that identity may do, so a
    // request without one still gets a clear 401 instead of a failed handshake.
    requestCert: true,
    rejectUnauthorized: false,
  };
}

export function clientOptions(tls: TlsMaterial): ClientSessionOptions & TlsMaterial {
  return { ...tls, settings: bulkSettings, maxSessionMemory: SESSION_MEMORY_MIB };
}

export interface TlsMaterial {
  readonly ca: string | Buffer;
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
}
