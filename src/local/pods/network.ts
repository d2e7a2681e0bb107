/**
 * The pods environment's network, in the host's namespace: one bridge per node holding that node's
 * pod subnet (pods on two nodes reach each other by plain routing between the bridges), and, with no
 * kube-proxy, two DNAT rules that take the `kubernetes` Service's address to the API server on
 * loopback. Every rule carries the comment RULE_COMMENT; teardown deletes exactly those.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { KUBERNETES_SERVICE_IP, RULE_COMMENT, type PodsNode } from './layout.js';
import { sh, shOk } from './sh.js';

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

export async function ipForward(): Promise<string> {
  return (await readFile(IP_FORWARD, 'utf8')).trim();
}

export async function setIpForward(value: string): Promise<void> {
  await writeFile(IP_FORWARD, value);
}

/** The bridge with the node's address on it before the kubelet starts (it registers that address). */
export async function addBridge(node: PodsNode): Promise<void> {
  if (!(await shOk('ip', ['link', 'show', node.bridge]))) await sh('ip', ['link', 'add', node.bridge, 'type', 'bridge']);
  const addrs = await sh('ip', ['-o', '-4', 'addr', 'show', 'dev', node.bridge]);
  if (!addrs.includes(` ${node.ip}/24 `)) await sh('ip', ['addr', 'add', `${node.ip}/24`, 'dev', node.bridge]);
  await sh('ip', ['link', 'set', node.bridge, 'up']);
  // Pods reach the API server on 127.0.0.1 through DNAT: the bridge must route to loopback addresses.
  await writeFile(`/proc/sys/net/ipv4/conf/${node.bridge}/route_localnet`, '1');
}

const rules = (apiserverPort: number): Array<[table: string, ...rule: string[]]> => {
  const dnat = ['-d', `${KUBERNETES_SERVICE_IP}/32`, '-p', 'tcp', '--dport', '443', '-m', 'comment', '--comment', RULE_COMMENT,
    '-j', 'DNAT', '--to-destination', `127.0.0.1:${apiserverPort}`];
  const forward = (dir: '-i' | '-o') => [dir, 'devmig-br+', '-m', 'comment', '--comment', RULE_COMMENT, '-j', 'ACCEPT'];
  return [
    ['nat', 'PREROUTING', ...dnat],
    ['nat', 'OUTPUT', ...dnat],
    // A host whose FORWARD policy drops (Docker sets it so) would cut pods of one node from the other's.
    ['filter', 'FORWARD', ...forward('-i')],
    ['filter', 'FORWARD', ...forward('-o')],
  ];
};

export async function addRules(apiserverPort: number): Promise<void> {
  for (const [table, chain, ...rule] of rules(apiserverPort)) {
    if (!(await shOk('iptables', ['-t', table, '-C', chain!, ...rule]))) await sh('iptables', ['-t', table, '-I', chain!, '1', ...rule]);
  }
}

/** Deletes every rule tagged RULE_COMMENT, whatever port it names: also those of an `up` that died. */
export async function deleteRules(): Promise<number> {
  let deleted = 0;
  for (const table of ['nat', 'filter']) {
    const listed = await sh('iptables', ['-t', table, '-S']).catch(() => '');
    for (const line of listed.split('\n')) {
      if (!line.startsWith('-A ') || !line.includes(`--comment ${RULE_COMMENT}`)) continue;
      const args = line.slice(3).trim().split(/\s+/);
      if (await shOk('iptables', ['-t', table, '-D', ...args])) deleted++;
    }
  }
  return deleted;
}

/** Every bridge named devmig-brN, this run's or a dead one's. */
export async function deleteBridges(): Promise<string[]> {
  const links = await sh('ip', ['-o', 'link', 'show', 'type', 'bridge']).catch(() => '');
  const ours = [...links.matchAll(/^\d+:\s+(devmig-br\d+)[:@]/gm)].map((m) => m[1]!);
  for (const b of ours) await shOk('ip', ['link', 'del', b]);
  return ours;
}
