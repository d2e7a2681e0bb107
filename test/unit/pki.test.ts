/** The X.509 pieces the PKI stands on, checked against Node's own verifier, and the configs that pick it. */
import { X509Certificate } from 'node:crypto';
import { parseAgentConfig } from '../../src/agent/config.js';
import { controllerConfigSchema } from '../../src/controller/config.js';
import { createCa, createCsr, issue, issuedBy, newKey, readCsr, signCsr } from '../../src/pki/x509.js';

describe('x509', () => {
  it('a CA issues leaves Node verifies, with the request\'s names, for TLS client and server', async () => {
    const ca = await createCa('test-ca', 1);
    const other = await createCa('other-ca', 1);
    const leaf = await issue(ca, 'agent:node-1', 1, { ips: ['10.0.0.7'], dnsNames: ['node-1.example'] });
    const x = new X509Certificate(leaf.certPem);
    expect(x.subject).toBe('CN=agent:node-1');
    expect(x.subjectAltName).toBe('IP Address:10.0.0.7, DNS:node-1.example');
    expect(x.ca).toBe(false);
    expect(x.keyUsage).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
    expect(new X509Certificate(ca.certPem).ca).toBe(true);
    expect(issuedBy(leaf.certPem, ca.certPem)).toBe(true);
    expect(issuedBy(leaf.certPem, other.certPem)).toBe(false);
    expect(x.checkPrivateKey((await import('node:crypto')).createPrivateKey(leaf.keyPem))).toBe(true);
  });

  it('a leaf never outlives its CA', async () => {
    const ca = await createCa('short', 1);
    const { notAfter } = await signCsr(ca, await createCsr('agent:n', {}, await newKey()), 30);
    expect(notAfter.getTime()).toBeLessThanOrEqual(Date.parse(new X509Certificate(ca.certPem).validTo));
  });

  it('reads what a request asks for, and refuses one whose signature does not hold', async () => {
    const pem = await createCsr('agent:node-2', { ips: ['127.0.0.3'] }, await newKey());
    expect(await readCsr(pem)).toEqual({ commonName: 'agent:node-2', subject: 'CN=agent:node-2', ips: ['127.0.0.3'], dnsNames: [], otherNames: [] });
    // Flip a byte anywhere past the header: the request no longer parses, or no longer verifies.
    const der = Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
    for (const at of [20, 40, der.length - 80, der.length - 10]) {
      const bad = Buffer.from(der);
      bad[at] = bad[at]! ^ 0x01;
      const forged = `-----BEGIN CERTIFICATE REQUEST-----\n${bad.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
      await expect(readCsr(forged)).rejects.toThrow(/not signed by its own key|does not verify|not a PEM certificate request/);
    }
    await expect(readCsr('hello')).rejects.toThrow(/not a PEM certificate request/);
  });
});

describe('configs', () => {
  const base = { namespace: 'devmig-system' };
  it('the controller takes either pki or files, and says which field is missing', () => {
    expect(controllerConfigSchema.safeParse({ ...base, pki: {} }).success).toBe(true);
    const both = controllerConfigSchema.safeParse({ ...base, pki: {}, ticketSecretFile: '/t', tls: { ca: 'a', cert: 'b', key: 'c' } });
    expect(both.success).toBe(false);
    expect(both.error?.issues[0]?.path).toEqual(['pki']);
    expect(both.error?.issues[0]?.message).toMatch(/either pki .* or tls \+ ticketSecretFile/);
    const neither = controllerConfigSchema.safeParse({ ...base });
    expect(neither.error?.issues[0]).toMatchObject({ path: ['tls'] });
    const half = controllerConfigSchema.safeParse({ ...base, tls: { ca: 'a', cert: 'b', key: 'c' } });
    expect(half.error?.issues[0]).toMatchObject({ path: ['ticketSecretFile'] });
    const signer = controllerConfigSchema.safeParse({ ...base, pki: { signerName: 'no-slash' } });
    expect(signer.error?.issues[0]).toMatchObject({ path: ['pki', 'signerName'] });
    expect(controllerConfigSchema.parse({ ...base, pki: {} }).evacuation.maxParallelTotal).toBe(8);
    const limit = controllerConfigSchema.safeParse({ ...base, pki: {}, evacuation: { maxParallelTotal: 0 } });
    expect(limit.error?.issues[0]).toMatchObject({ path: ['evacuation', 'maxParallelTotal'] });
  });

  it('an agent asking the cluster for its certificate needs kube set', () => {
    const cfg = { node: 'node-1', stateDir: '/tmp/x', tls: { kubernetes: { namespace: 'devmig-system' } } };
    expect(() => parseAgentConfig(cfg)).toThrow(/tls.kubernetes .* `kube` must be set too/);
    expect(parseAgentConfig({ ...cfg, kube: {} }).tls).toEqual({ kubernetes: { namespace: 'devmig-system', caConfigMapName: 'devmig-ca', signerName: 'devmig.io/agent', expirationSeconds: 604800 } });
  });
});
