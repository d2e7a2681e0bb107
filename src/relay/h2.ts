/**
 * HTTP/2 settings for bulk transfer. node:http2 defaults to 64 KiB flow-control windows, which caps a
 * stream at one window per round trip; a device's state is gigabytes, so windows, frame size and
 * session memory are raised on both ends (DESIGN.md, Library facts).
 */
import type { SecureClientSessionOptions, SecureServerOptions, Settings } from 'node:http2';
import { checkServerIdentity, type PeerCertificate } from 'node:tls';
import { RelayError } from './errors.js';

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

/**
 * A connection to the agent of `node`, and to nothing else. Only our CA is trusted (`ca` replaces
 * the system roots), and the peer's certificate must name `agent:<node>`: what a DeviceNode says
 * about its endpoint is a claim another node may have written, so the address proves nothing
 * (DESIGN.md, Trust). A refusal fails the handshake, before any request can be sent; the session's
 * 'error' is then a RelayError with code PeerIdentityMismatch. (http2.connect resumes no TLS
 * session, so the check runs on every connection.)
 */
export function clientOptions(tls: TlsMaterial, node: string): SecureClientSessionOptions & TlsMaterial {
  return {
    ...tls, settings: bulkSettings, maxSessionMemory: SESSION_MEMORY_MIB,
    checkServerIdentity: (host: string, cert: PeerCertificate) => peerMismatch(node, host, cert) ?? checkServerIdentity(host, cert),
  };
}

/** The identity an agent's certificate carries. */
export const agentIdentity = (node: string): string => `agent:${node}`;

function peerMismatch(node: string, host: string, cert: PeerCertificate): RelayError | undefined {
  // Typed a string; an array when a certificate carries several CNs.
  const cn: string | string[] | undefined = cert.subject?.CN;
  const want = agentIdentity(node);
  if (cn === want) return undefined;
  const shown = Array.isArray(cn) ? cn.join('", "') : cn ?? 'no common name';
  return new RelayError('PeerIdentityMismatch', `the peer at ${host} presented a certificate for "${shown}", not "${want}": ` +
    `it is not the agent of node ${node}, so nothing was sent to it (is the DeviceNode's endpoint wrong, or redirected?)`);
}

export interface TlsMaterial {
  readonly ca: string | Buffer;
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
}
