/**
 * `devmig local down` of the pods environment: everything `up` made goes, in an order that lets each
 * part go cleanly (kubelets first, so nothing restarts the pods; then the pods through each node's
 * CRI; then containerd, the control plane, mounts, network, cgroups, files). It also works after an
 * `up` that died half-way, or without pods.json at all: the names and addresses are fixed
 * (layout.ts), so it looks for them rather than trusting a record.
 */
import { readdir, readFile, readlink, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { alive } from '../../vfio/sim/lock.js';
import { cacheDir } from '../apiserver.js';
import { CRICTL_VERSION } from './binaries.js';
import { DEVICE_ROOT, LIB_ROOT, OWNER_FILE, podsNode, RUN_ROOT, statePath, type PodsNode } from './layout.js';
import { deleteBridges, deleteRules, setIpForward } from './network.js';
import { removeCgroups } from './node.js';
import { readPods, type PodsState } from './cluster.js';
import { exists, sh, shOk, unmountUnder } from './sh.js';

export async function podsDown(dir: string, say: (t: string) => void): Promise<void> {
  const s = await readPods(dir);
  const nodes = await ourNodes(s);
  await stopProcesses(s, nodes, say);
  // 4. Mounts (volumes, rootfs, shm, network namespaces), then the files under them.
  const unmounted = await unmountUnder([LIB_ROOT, RUN_ROOT, DEVICE_ROOT]);
  const netns = await deleteOurNetns();
  if (unmounted || netns) say(`unmounted ${unmounted} mounts, deleted ${netns} network namespaces`);
  for (const p of [LIB_ROOT, RUN_ROOT, DEVICE_ROOT, '/run/devmig-buildah']) await rm(p, { recursive: true, force: true });
  // 5. Network and cgroups.
  const rules = await deleteRules();
  const bridges = await deleteBridges();
  say(`deleted ${rules} iptables rules and the bridges ${bridges.join(', ') || '(none)'}`);
  const left = (await Promise.all(nodes.map(removeCgroups))).flat();
  if (left.length) say(`cgroups that would not go: ${left.join(', ')}`);
  else say(`removed the cgroups ${nodes.map((n) => n.cgroupRoot).join(', ')}`);
  // 6. What kubelet, containerd and CNI write whatever their configuration: what `up` created, and our entries in the rest.
  await cleanWrittenAnyway(s);
  if (s?.ipForwardBefore && s.ipForwardBefore !== '1') await setIpForward(s.ipForwardBefore);
  await rm(join(dir, 'apiserver'), { recursive: true, force: true });
  await rm(statePath(dir), { force: true });
  await rm(OWNER_FILE, { force: true });
  say('the pods environment is down');
}

async function stopProcesses(s: PodsState | undefined, nodes: PodsNode[], say: (t: string) => void): Promise<void> {
  const pids = s?.pids ?? {};
  // 1. Kubelets, so that nothing starts the pods again.
  for (const [what, pid] of Object.entries(pids)) if (what.startsWith('kubelet ')) await stop(what, pid, say);
  // 2. The pods, through each node's CRI: containers stopped, sandboxes and their network torn down by CNI.
  const crictl = s?.tools?.crictl ?? join(cacheDir(), 'bin', `crictl-${CRICTL_VERSION}`, 'crictl');
  for (const n of nodes) {
    if (!(await exists(n.socket)) || !(await exists(crictl))) continue;
    if (await shOk(crictl, ['--runtime-endpoint', `unix://${n.socket}`, '--timeout', '60s', 'rmp', '--force', '--all'], { timeoutMs: 120_000 })) {
      say(`removed the pods of ${n.name}`);
    }
  }
  for (const [what, pid] of Object.entries(pids)) if (what.startsWith('containerd ')) await stop(what, pid, say);
  // 3. Whatever a dead containerd left: its shims, and every process still in the nodes' cgroups.
  const killed = await killLeftovers(nodes);
  if (killed) say(`killed ${killed} processes left in the nodes' cgroups or shims`);
  for (const what of ['kube-scheduler', 'kube-controller-manager', 'kube-apiserver']) if (pids[what]) await stop(what, pids[what], say);
}

/** The nodes pods.json names, and any other node directory or bridge found (an `up` that died). */
async function ourNodes(s: PodsState | undefined): Promise<PodsNode[]> {
  const idx = new Set<number>();
  for (const n of s?.nodes ?? []) idx.add(Number(n.name.replace('node-', '')));
  for (const root of [LIB_ROOT, RUN_ROOT]) {
    for (const e of await readdir(root).catch(() => [])) if (/^node-\d+$/.test(e)) idx.add(Number(e.slice(5)));
  }
  const links = await sh('ip', ['-o', 'link', 'show', 'type', 'bridge']).catch(() => '');
  for (const m of links.matchAll(/devmig-br(\d+)/g)) idx.add(Number(m[1]));
  return [...idx].sort((a, b) => a - b).map(podsNode);
}

/** SIGTERM, then SIGKILL after 15 s; only if the pid still runs the program it was recorded as. */
async function stop(what: string, pid: number, say: (t: string) => void): Promise<void> {
  if (!alive(pid)) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  const program = what.split(' ')[0]!;
  if (!cmdline.includes(program)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 150 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  say(`stopped ${what} (pid ${pid})`);
}

async function killLeftovers(nodes: PodsNode[]): Promise<number> {
  const victims = new Set<number>();
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const cmdline = await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('containerd-shim') && nodes.some((n) => cmdline.includes(n.socket))) victims.add(Number(e));
    const cgroup = await readFile(`/proc/${e}/cgroup`, 'utf8').catch(() => '');
    if (nodes.some((n) => cgroup.includes(`:${n.cgroupRoot}/`) || cgroup.endsWith(`:${n.cgroupRoot}\n`))) victims.add(Number(e));
  }
  victims.delete(process.pid);
  for (const pid of victims) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch { /* gone already */ }
  }
  if (victims.size) await new Promise((r) => setTimeout(r, 500));
  return victims.size;
}

/** Network namespaces the CRI left in /run/netns that hold an address of our pod subnets. */
async function deleteOurNetns(): Promise<number> {
  let n = 0;
  for (const e of await readdir('/run/netns').catch(() => [])) {
    if (!e.startsWith('cni-')) continue;
    const addrs = await sh('ip', ['netns', 'exec', e, 'ip', '-o', '-4', 'addr']).catch(() => '');
    if (/ 10\.244\.\d+\.\d+\//.test(addrs) && (await shOk('ip', ['netns', 'del', e]))) n++;
  }
  return n;
}

async function cleanWrittenAnyway(s: PodsState | undefined): Promise<void> {
  for (const p of s?.created ?? []) {
    if (p === '/run/netns') await rmdir(p).catch(() => undefined); // others' namespaces may have come since
    else await rm(p, { recursive: true, force: true });
  }
  // Where they existed before us: only our entries.
  for (const e of await readdir('/var/log/containers').catch(() => [])) {
    const target = await readlink(join('/var/log/containers', e)).catch(() => '');
    if (target.startsWith(LIB_ROOT)) await rm(join('/var/log/containers', e), { force: true });
  }
  for (const e of await readdir('/var/lib/cni/results').catch(() => [])) {
    if (e.startsWith('devmig-node-')) await rm(join('/var/lib/cni/results', e), { force: true });
  }
}
