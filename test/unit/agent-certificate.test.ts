/**
 * An agent's certificate kept in its state directory across restarts: with the state on the node it
 * outlives the pod, and a new pod comes up on a new address the old certificate does not name.
 */
import { keepable } from '../../src/agent/agent.js';
import { createCa, issue } from '../../src/pki/x509.js';

describe('an agent certificate kept from the last run', () => {
  it('serves again only while fresh, for this node, and naming the address the agent advertises now', async () => {
    const ca = await createCa('test-ca', 1);
    const { certPem } = await issue(ca, 'agent:node-1', 3, { ips: ['10.244.1.3'] });
    expect(keepable(certPem, 'node-1', '10.244.1.3')).toBeInstanceOf(Date);
    expect(keepable(certPem, 'node-1', undefined)).toBeInstanceOf(Date);
    // A new pod, a new address: ask again.
    expect(keepable(certPem, 'node-1', '10.244.1.4')).toBeUndefined();
    expect(keepable(certPem, 'node-2', '10.244.1.3')).toBeUndefined();
    expect(keepable(certPem, 'node-1', '10.244.1.3', Date.now() + 2.5 * 86_400_000)).toBeUndefined();
  });
});
