/**
 * The agent's certificate from the Kubernetes CSR API: a fresh key that never leaves the process, a
 * request for CN `agent:<node>` with the addresses it serves on, and the installation CA from the
 * ConfigMap the controller publishes. The controller approves and signs (src/controller/pki.ts).
 */
import * as k8s from '@kubernetes/client-node';
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { createCsr, newKey } from '../pki/x509.js';
import type { TlsMaterial } from '../relay/h2.js';
import type { Kube } from '../kube/kube.js';

export interface CsrOptions {
  readonly node: string;
  readonly namespace: string;
  readonly caConfigMapName: string;
  readonly signerName: string;
  readonly expirationSeconds: number;
  /** Hosts the agent is reached at; IPs and DNS names go into the certificate's SANs. */
  readonly hosts: string[];
  readonly timeoutMs?: number;
}

export interface AgentCertificate extends TlsMaterial {
  readonly notAfter: Date;
  readonly csrName: string;
}

export async function requestCertificate(kube: Kube, o: CsrOptions): Promise<AgentCertificate> {
  const certs = kube.config.makeApiClient(k8s.CertificatesV1Api);
  const key = await newKey();
  const hosts = o.hosts.filter((h) => h && h !== '0.0.0.0' && h !== '::');
  const csrPem = await createCsr(`agent:${o.node}`, { ips: hosts.filter((h) => isIP(h)), dnsNames: hosts.filter((h) => !isIP(h)) }, key);
  // One name per request (its hash), so a retry after a crash asks anew instead of colliding.
  const name = `devmig-agent-${o.node}-${createHash('sha256').update(csrPem).digest('hex').slice(0, 10)}`.slice(0, 253);
  await certs.createCertificateSigningRequest({ body: {
    metadata: { name, labels: { 'app.kubernetes.io/part-of': 'devmig', 'devmig.io/node': o.node } },
    spec: {
      request: Buffer.from(csrPem).toString('base64'),
      signerName: o.signerName,
      expirationSeconds: o.expirationSeconds,
      usages: ['digital signature', 'client auth', 'server auth'],
    },
  } });
  const deadline = Date.now() + (o.timeoutMs ?? 120_000);
  for (;;) {
    const csr = await certs.readCertificateSigningRequest({ name });
    const bad = csr.status?.conditions?.find((c) => c.type === 'Denied' || c.type === 'Failed');
    if (bad) throw new Error(`certificate request ${name} was ${bad.type.toLowerCase()} (${bad.reason ?? 'no reason'}): ${bad.message ?? ''}`);
    if (csr.status?.certificate) {
      const certPem = Buffer.from(csr.status.certificate, 'base64').toString('utf8');
      const ca = await readCa(kube, o);
      const { X509Certificate } = await import('node:crypto');
      const notAfter = new Date(new X509Certificate(certPem).validTo);
      return { ca, cert: certPem, key: key.keyPem, notAfter, csrName: name };
    }
    if (Date.now() > deadline) {
      throw new Error(`certificate request ${name} was not signed in ${Math.round((o.timeoutMs ?? 120_000) / 1000)} s; is the devmig controller running, and does signer ${o.signerName} match its pki.signerName?`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function readCa(kube: Kube, o: CsrOptions): Promise<string> {
  const cm = await kube.core.readNamespacedConfigMap({ name: o.caConfigMapName, namespace: o.namespace });
  const ca = cm.data?.['ca.crt'];
  if (!ca) throw new Error(`ConfigMap ${o.namespace}/${o.caConfigMapName} has no ca.crt; the controller publishes it on start`);
  return ca;
}
