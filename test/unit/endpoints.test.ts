/** An agent's endpoint must be an address of its node or of its agent pod (defence in depth beside pinned identities). */
import { foreignEndpoint, hostOf, type EndpointReads } from '../../src/controller/endpoints.js';

const reads: EndpointReads = {
  nodeAddresses: async (node) => ({ 'node-1': ['10.0.0.1', 'node-1', 'fd00::1'], 'node-2': ['10.0.0.2'] } as Record<string, string[]>)[node] ?? [],
  agentPodIPs: async (node) => (node === 'node-2' ? ['10.244.2.7'] : []),
};

it.each([
  ['https://10.0.0.1:9443', 'the InternalIP'],
  ['https://node-1:9443', 'the Hostname'],
  ['https://NODE-1:9443', 'a host name, in any case'],
  ['https://[fd00:0::1]:9443', 'an IPv6 address, spelled otherwise'],
])('node-1 at %s is its own (%s)', async (endpoint) => {
  expect(await foreignEndpoint(reads, 'node-1', endpoint)).toBeUndefined();
});

it('an agent pod\'s IP on the node is the node\'s too', async () => {
  expect(await foreignEndpoint(reads, 'node-2', 'https://10.244.2.7:9443')).toBeUndefined();
});

it.each([
  ['https://10.0.0.2:9443', /10\.0\.0\.2 is neither an address of node node-1 \(10\.0\.0\.1, node-1, fd00::1\) nor of an agent pod on it \(none\)/],
  ['https://10.244.2.7:9443', /neither an address of node node-1/],
  ['http://10.0.0.1:9443', /not https:\/\/HOST:PORT/],
  ['10.0.0.1:9443', /not https:\/\/HOST:PORT/],
])('node-1 at %s is refused, saying why', async (endpoint, why) => {
  expect(await foreignEndpoint(reads, 'node-1', endpoint)).toMatch(why);
});

it('reads the hosts of endpoints as the TLS layer dials them', () => {
  expect(hostOf('https://[::1]:9443')).toBe('::1');
  expect(hostOf('https://127.0.0.2:9443')).toBe('127.0.0.2');
  expect(hostOf('not a url')).toBeUndefined();
});
