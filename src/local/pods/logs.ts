/**
 * Everything to read when the pods environment failed, in one text: the control plane's, each
 * containerd's and each kubelet's log (their last lines), the pods and events as the API server sees
 * them, devmig's objects, and every container's log as the kubelets kept it (also of containers that
 * restarted). A failure that shows once in CI must be diagnosable from this alone.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readPods } from './cluster.js';
import { LIB_ROOT, logDir, NAMESPACE } from './layout.js';
import { sh } from './sh.js';

const TAIL = 200;

async function tail(file: string, lines = TAIL): Promise<string> {
  const text = await readFile(file, 'utf8').catch((e: Error) => `(unreadable: ${e.message})`);
  const all = text.split('\n');
  return (all.length > lines ? [`... (${all.length - lines} earlier lines in ${file})`, ...all.slice(-lines)] : all).join('\n');
}

async function files(dir: string, suffix: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await files(p, suffix)));
    else if (e.name.endsWith(suffix)) out.push(p);
  }
  return out.sort();
}

export async function podsLogs(dir: string, write: (text: string) => void): Promise<void> {
  const s = await readPods(dir);
  const section = (title: string, body: string) => write(`\n===== ${title}\n${body.trimEnd()}\n`);
  for (const f of (await readdir(logDir(dir)).catch(() => [])).sort()) section(`${f} (last ${TAIL} lines)`, await tail(join(logDir(dir), f)));
  const kubectl = s?.tools?.kubectl;
  if (kubectl && s) {
    const k = (args: string[]) => sh(kubectl, ['--kubeconfig', s.kubeconfig, '--request-timeout', '20s', ...args]).catch((e: Error) => e.message);
    section('kubectl get nodes,pods -A -o wide', `${await k(['get', 'nodes', '-o', 'wide'])}\n${await k(['get', 'pods', '-A', '-o', 'wide'])}`);
    section(`kubectl get daemonsets,deployments -n ${NAMESPACE}`, await k(['get', 'daemonsets,deployments,leases', '-n', NAMESPACE, '-o', 'wide']));
    section('kubectl get events -A', await k(['get', 'events', '-A', '--sort-by', '.lastTimestamp']));
    section('kubectl get devicenodes,dmig,devac -o yaml', await k(['get', 'devicenodes,devicemigrations,deviceevacuations', '-o', 'yaml']));
  }
  for (const n of s?.nodes ?? []) {
    const crictl = s?.tools?.crictl;
    if (crictl) section(`crictl ps -a (${n.name})`, await sh(crictl, ['--runtime-endpoint', `unix://${n.socket}`, '--timeout', '10s', 'ps', '-a']).catch((e: Error) => e.message));
  }
  // Container logs as the kubelets keep them: <node>/pod-logs/<namespace>_<pod>_<uid>/<container>/<restart>.log
  for (const f of await files(LIB_ROOT, '.log')) {
    if (!f.includes('/pod-logs/')) continue;
    const size = (await stat(f).catch(() => undefined))?.size ?? 0;
    section(`${f.slice(LIB_ROOT.length + 1)} (${size} bytes)`, await tail(f, 400));
  }
}
