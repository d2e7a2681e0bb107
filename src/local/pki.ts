/**
 * The devmig CA for a local environment and for tests: a CA, then certificates whose common name is
 * the identity the agents check ("controller", "agent:<node>"). On a cluster the Helm chart makes the
 * same material; here openssl does.
 */
import { execFile } from 'node:child_process';
import { access, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

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
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '3650', '-subj', `/O=devmig/CN=${name}`]);
  }
  return { cert, key };
}

/** Issues (once) a certificate for `identity`, valid for client and server use at the given IPs and names. */
export async function issue(dir: string, file: string, identity: string, sans: { ips?: string[]; dns?: string[] } = {}): Promise<CertFiles> {
  const ca = await ensureCa(dir);
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  if (await exists(cert)) return { ca: ca.cert, cert, key };
  const csr = join(dir, `${file}.csr`);
  const ext = join(dir, `${file}.ext`);
  const alt = [...(sans.ips ?? ['127.0.0.1']).map((i) => `IP:${i}`), ...(sans.dns ?? ['localhost']).map((d) => `DNS:${d}`)];
  await writeFile(ext, `subjectAltName=${alt.join(',')}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n`);
  await run('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', csr,
    '-subj', `/O=devmig/CN=${identity}`]);
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-out', cert,
    '-days', '825', '-extfile', ext]);
  return { ca: ca.cert, cert, key };
}

export async function load(files: CertFiles): Promise<Material> {
  const [ca, cert, key] = await Promise.all([readFile(files.ca), readFile(files.cert), readFile(files.key)]);
  return { ca, cert, key };
}
