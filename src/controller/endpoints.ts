/**
 * Defence in depth beside pinned identities. An agent writes its own DeviceNode, endpoint included,
 * so the endpoint is a claim: the handshake's identity check (src/relay/h2.ts) is what makes a
 * redirected endpoint harmless. This check refuses such an endpoint before it is even dialled: its
 * host must be an address of that node (Node.status.addresses), or the IP of the agent's pod on it.
 */
import { isIP } from 'node:net';
import type { Kube } from '../kube/kube.js';

/** What the check reads; `agentPodIPs` may find nothing (agents on the host network, or no pods). */
export interface EndpointReads {
  nodeAddresses(node: string): Promise<string[]>;
  agentPodIPs(node: string): Promise<string[]>;
}

/** The host of an https://HOST:PORT endpoint, IPv6 without brackets and in its canonical form. */
export function hostOf(endpoint: string): string | undefined {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'https:' || !url.hostname) return undefined;
  return canonical(url.hostname.replace(/^\[(.*)\]$/, '$1'));
}

/** One spelling per address, so "fd00:0::1" and "fd00::1" compare equal. */
function canonical(address: string): string {
  return isIP(address) === 6 ? new URL(`https://[${address}]/`).hostname.slice(1, -1) : address.toLowerCase();
}

/** Why `endpoint` is not one of `node`'s own, or undefined when it is. */
export async function foreignEndpoint(reads: EndpointReads, node: string, endpoint: string): Promise<string | undefined> {
  const host = hostOf(endpoint);
  if (!host) return `the DeviceNode of ${node} gives endpoint "${endpoint}", which is not https://HOST:PORT`;
  const addresses = (await reads.nodeAddresses(node)).map(canonical);
  if (addresses.includes(host)) return undefined;
  const pods = (await reads.agentPodIPs(node)).map(canonical);
  if (pods.includes(host)) return undefined;
  return `the DeviceNode of ${node} gives endpoint ${endpoint}, but ${host} is neither an address of node ${node} ` +
    `(${addresses.join(', ') || 'none'}) nor of an agent pod on it (${pods.join(', ') || 'none'}): refused before connecting. ` +
    `An agent publishes its own endpoint; if this one is right, set the agent's advertise to an address of its node or pod`;
}

/** The reads from the API server: the Node's addresses, and the IPs of pods of the agent's ServiceAccount on it. */
export function endpointReads(kube: Kube, agentPods?: { namespace: string; serviceAccount: string }): EndpointReads {
  return {
    nodeAddresses: async (node) => {
      const n = await kube.core.readNode({ name: node }).catch((e: unknown) => ((e as { code?: number }).code === 404 ? undefined : Promise.reject(e as Error)));
      return (n?.status?.addresses ?? []).map((a) => a.address);
    },
    agentPodIPs: async (node) => {
      if (!agentPods) return [];
      const pods = await kube.core.listNamespacedPod({
        namespace: agentPods.namespace, fieldSelector: `spec.nodeName=${node},spec.serviceAccountName=${agentPods.serviceAccount}`,
      });
      return pods.items.flatMap((p) => (p.status?.podIPs ?? []).map((ip) => ip.ip));
    },
  };
}
