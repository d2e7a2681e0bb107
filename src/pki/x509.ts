/**
 * The little X.509 devmig needs, on WebCrypto through @peculiar/x509 (Node's crypto verifies
 * certificates but cannot make them or CSRs): an ECDSA P-256 CA, certificate requests, and signing.
 * Keys travel as PKCS#8 PEM, certificates and requests as PEM, which is what node:tls and the
 * Kubernetes CSR API take.
 */
import 'reflect-metadata'; // @peculiar/x509 resolves its ASN.1 providers through tsyringe, which needs it
import * as x509 from '@peculiar/x509';
import { randomBytes, webcrypto, X509Certificate } from 'node:crypto';

type CryptoKeyPair = webcrypto.CryptoKeyPair;
type CryptoKey = webcrypto.CryptoKey;
const { subtle } = webcrypto;

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;

export interface KeyPair {
  readonly keyPem: string;
  readonly keys: CryptoKeyPair;
}

export interface Ca {
  readonly certPem: string;
  readonly keyPem: string;
}

export interface Issued {
  readonly certPem: string;
  readonly keyPem: string;
  readonly notAfter: Date;
}

/** What a certificate request asks for, read from it after its signature was checked. */
export interface CsrContents {
  readonly commonName: string | undefined;
  /** Every subject attribute, e.g. ["CN=agent:node-1"]: anything beyond CN is refused by callers. */
  readonly subject: string;
  readonly ips: string[];
  readonly dnsNames: string[];
  readonly otherNames: string[];
}

export async function newKey(): Promise<KeyPair> {
  const keys = (await subtle.generateKey(ALG, true, ['sign', 'verify']));
  return { keys, keyPem: pem('PRIVATE KEY', await subtle.exportKey('pkcs8', keys.privateKey)) };
}

export async function createCa(commonName: string, days: number): Promise<Ca> {
  const { keys, keyPem } = await newKey();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(), name: `CN=${commonName}`, notBefore: backdated(), notAfter: new Date(Date.now() + days * DAY_MS),
    keys, signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem };
}

export async function createCsr(commonName: string, sans: { ips?: string[]; dnsNames?: string[] }, key: KeyPair): Promise<string> {
  const names = [...(sans.ips ?? []).map((value) => ({ type: 'ip' as const, value })), ...(sans.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value }))];
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${commonName}`, keys: key.keys, signingAlgorithm: ALG,
    extensions: names.length ? [new x509.SubjectAlternativeNameExtension(names)] : [],
  });
  return csr.toString('pem');
}

/** Parses a request and checks that whoever holds its key signed it; throws with the reason if not. */
export async function readCsr(csrPem: string): Promise<CsrContents> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (e) {
    throw new Error(`not a PEM certificate request: ${(e as Error).message}`);
  }
  const valid = await csr.verify().catch((e: unknown) => { throw new Error(`the certificate request does not verify: ${(e as Error).message}`); });
  if (!valid) throw new Error('the certificate request is not signed by its own key');
  const san = csr.extensions.find((e): e is x509.SubjectAlternativeNameExtension => e instanceof x509.SubjectAlternativeNameExtension);
  const names = san?.names.items ?? [];
  const cn = csr.subjectName.getField('CN');
  return {
    commonName: cn.length === 1 ? cn[0] : undefined,
    subject: csr.subject,
    ips: names.filter((n) => n.type === 'ip').map((n) => n.value),
    dnsNames: names.filter((n) => n.type === 'dns').map((n) => n.value),
    otherNames: names.filter((n) => n.type !== 'ip' && n.type !== 'dns').map((n) => `${n.type}:${n.value}`),
  };
}

/** Signs a (checked) request with the CA: a leaf for TLS clients and servers, with the request's SANs. */
export async function signCsr(ca: Ca, csrPem: string, days: number): Promise<{ certPem: string; notAfter: Date }> {
  const csr = new x509.Pkcs10CertificateRequest(csrPem);
  const issuer = new x509.X509Certificate(ca.certPem);
  const signingKey = await importKey(ca.keyPem);
  const notAfter = new Date(Math.min(Date.now() + days * DAY_MS, issuer.notAfter.getTime()));
  const san = csr.extensions.filter((e) => e instanceof x509.SubjectAlternativeNameExtension);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(), subject: csr.subject, issuer: issuer.subject, notBefore: backdated(), notAfter,
    publicKey: csr.publicKey, signingKey, signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      await x509.AuthorityKeyIdentifierExtension.create(issuer),
      ...san,
    ],
  });
  return { certPem: cert.toString('pem'), notAfter };
}

/** A key and a certificate for `commonName` in one go (the controller issues its own this way). */
export async function issue(ca: Ca, commonName: string, days: number, sans: { ips?: string[]; dnsNames?: string[] } = {}): Promise<Issued> {
  const key = await newKey();
  const { certPem, notAfter } = await signCsr(ca, await createCsr(commonName, sans, key), days);
  return { certPem, keyPem: key.keyPem, notAfter };
}

/** Whether `certPem` was issued by `caPem` (Node's own verification, not the library's). */
export function issuedBy(certPem: string, caPem: string): boolean {
  return new X509Certificate(certPem).verify(new X509Certificate(caPem).publicKey);
}

async function importKey(keyPem: string): Promise<CryptoKey> {
  const der = Buffer.from(keyPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
  return subtle.importKey('pkcs8', der, ALG, false, ['sign']);
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** A positive 128-bit serial, as RFC 5280 asks. */
function serial(): string {
  const b = randomBytes(16);
  b[0] = b[0]! & 0x7f;
  return b.toString('hex');
}

/** Clocks on nodes drift: a certificate valid from five minutes ago is not refused by a slow peer. */
function backdated(): Date {
  return new Date(Date.now() - 5 * 60_000);
}
