/**
 * Who is calling. Trust is rooted in a CA that devmig's installation manages (the Helm chart or
 * `devmig local up` creates it): every agent and the controller present a client certificate from it.
 * The certificate's common name is the identity: "controller", or "agent:<node>".
 */
import type { TLSSocket } from 'node:tls';
import { randomBytes, timingSafeEqual } from 'node:crypto';

export type Identity = { kind: 'controller' } | { kind: 'agent'; node: string };

export class AuthError extends Error {
  override readonly name = 'AuthError';
  constructor(readonly status: 401 | 403, message: string) {
    super(message);
  }
}

export function identify(socket: TLSSocket): Identity {
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) {
    throw new AuthError(401, 'no client certificate: every request must present a certificate issued by the devmig CA');
  }
  if (!socket.authorized) {
    throw new AuthError(401, `client certificate refused: ${String(socket.authorizationError)} (it must be issued by the devmig CA)`);
  }
  const cn = Array.isArray(cert.subject.CN) ? cert.subject.CN[0] : cert.subject.CN;
  if (cn === 'controller') return { kind: 'controller' };
  const m = /^agent:([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$/.exec(cn ?? '');
  if (m?.[1]) return { kind: 'agent', node: m[1] };
  throw new AuthError(403, `certificate common name "${cn}" is neither "controller" nor "agent:<node>"`);
}

export function describeIdentity(id: Identity): string {
  return id.kind === 'controller' ? 'the controller' : `the agent of node ${id.node}`;
}

export function newTicket(): string {
  return randomBytes(32).toString('base64url');
}

export function sameTicket(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
