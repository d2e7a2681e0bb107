/**
 * Certificate files for tests and benchmarks that run agents without a cluster: a CA, then
 * certificates whose common name is the identity the agents check ("controller", "agent:<node>").
 * Made with the same code the controller's PKI uses (src/pki/x509.ts); no openssl needed.
 */
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createCa, issue as issueCert } from '../pki/x509.js';

export interface CertFiles {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

export interface Material {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false);
}

export async function ensureCa(dir: string, name = 'devmig-ca'): Promise<{ cert: string; key: string }> {
  await mkdir(dir, { recursive: true });
  const cert = join(dir, 'ca.crt');
  const key = join(dir, 'ca.key');
  if (!(await exists(cert)) || !(await exists(key))) {
    const ca = await createCa(name, 3650);
    await writeFile(key, ca.keyPem, { mode: 0o600 });
    await writeFile(cert, ca.certPem);
  }
  return { cert, key };
}

/** Issues (once) a certificate for `identity`, valid for client and server use at the given IPs and names. */
export async function issue(dir: string, file: string, identity: string, sans: { ips?: string[]; dns?: string[] } = {}): Promise<CertFiles> {
  const ca = await ensureCa(dir);
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  if (await exists(cert)) return { ca: ca.cert, cert, key };
  const [caCertPem, caKeyPem] = await Promise.all([readFile(ca.cert, 'utf8'), readFile(ca.key, 'utf8')]);
  const leaf = await issueCert({ certPem: caCertPem, keyPem: caKeyPem }, identity, 825, { ips: sans.ips ?? ['127.0.0.1'], dnsNames: sans.dns ?? ['localhost'] });
  await writeFile(key, leaf.keyPem, { mode: 0o600 });
  await writeFile(cert, leaf.certPem);
  return { ca: ca.cert, cert, key };
}

export async function load(files: CertFiles): Promise<Material> {
  const [ca, cert, key] = await Promise.all([readFile(files.ca), readFile(files.cert), readFile(files.key)]);
  return { ca, cert, key };
}
