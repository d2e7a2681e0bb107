/**
 * `npm run bench:relay -- --size 1Gi -o json`: moves a simulated device's state between two agent
 * processes over TLS on loopback, then the same number of bytes through a plain TLS socket pipe between
 * two processes (same crypto, no HTTP/2, no digest, no device), and compares.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as tlsServer } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { AgentClient } from '../agent/client.js';
import { AGENT_NODE_FLAGS } from '../agent/config.js';
import { newTicket } from '../agent/identity.js';
import { formatBytes, parseQuantity } from '../api/quantity.js';
import { issue, load, type Material } from '../local/pki.js';
import { DEFAULT_DIGEST } from '../relay/digest.js';
import { deviceMemoryRoot } from '../vfio/sim/memory.js';

const self = fileURLToPath(import.meta.url);
const devmig = fileURLToPath(new URL('../../bin/devmig.js', import.meta.url));
const MiB = 2 ** 20;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { size: { type: 'string', default: '1Gi' }, output: { type: 'string', short: 'o' }, digest: { type: 'string', default: DEFAULT_DIGEST },
      role: { type: 'string' }, port: { type: 'string' }, bytes: { type: 'string' }, dir: { type: 'string' } },
  });
  if (values.role === 'tls-sink') return tlsSink(values.dir!);
  if (values.role === 'tls-source') return tlsSource(values.dir!, Number(values.port), Number(values.bytes));
  const size = parseQuantity(values.size, '--size');
  const json = values.output === 'json';
  const say = (t: string) => { if (!json) process.stderr.write(`${t}\n`); };
  const dir = await mkdtemp(join(await deviceMemoryRoot(), 'devmig-bench-'));
  try {
    const pki = join(dir, 'pki');
    const ctl = await load(await issue(pki, 'controller', 'controller'));
    say(`relay: ${formatBytes(size)} between two agent processes (digest ${values.digest})`);
    const relay = await relayRun(dir, pki, ctl, size, values.digest);
    const perGiB = (cpu: number[]) => cpu.map((c) => round(c / (relay.bytes / 2 ** 30), 2));
    say(`relay: ${relay.MBps.toFixed(0)} MB/s, agent peak RSS ${relay.peakRssMB.toFixed(0)} MB (source ${relay.rss[0]!.toFixed(0)}, target ${relay.rss[1]!.toFixed(0)}), ` +
      `CPU s/GiB source ${perGiB(relay.cpu)[0]}, target ${perGiB(relay.cpu)[1]}`);
    const baseline = await baselineRun(dir, relay.bytes);
    say(`baseline TLS pipe: ${baseline.MBps.toFixed(0)} MB/s, CPU s/GiB source ${perGiB(baseline.cpu)[0]}, sink ${perGiB(baseline.cpu)[1]}`);
    const out = {
      bytes: relay.bytes, relay_MBps: round(relay.MBps), baseline_MBps: round(baseline.MBps), ratio: round(relay.MBps / baseline.MBps, 3),
      agent_peak_rss_MB: round(relay.peakRssMB), digest: values.digest,
      // Where the time goes on a CPU-bound machine: CPU seconds per GiB moved, each side.
      cpu_s_per_GiB: { relay: perGiB(relay.cpu), baseline: perGiB(baseline.cpu) },
    };
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function relayRun(dir: string, pki: string, ctl: Material, size: number, digest: string | undefined) {
  const agents: Array<{ child: ChildProcess; endpoint: string }> = [];
  try {
    for (const [node, host, port] of [['node-a', '127.0.0.2', 29443], ['node-b', '127.0.0.3', 29444]] as const) {
      await issue(pki, `agent-${node}`, `agent:${node}`, { ips: [host] });
      const cfg = {
        node, listen: { host, port }, stateDir: join(dir, node, 'state'), holder: false, digest,
        tls: { ca: join(pki, 'ca.crt'), cert: join(pki, `agent-${node}.crt`), key: join(pki, `agent-${node}.key`) },
        devices: { simulated: { dir: join(dir, node, 'sim'), devices: [{ name: 'sim-0', stateSize: size, pageSize: MiB }] } },
      };
      await writeFile(join(dir, `${node}.json`), JSON.stringify(cfg));
      const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, devmig, 'agent', '--config', join(dir, `${node}.json`)], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DEVMIG_LOG_LEVEL: 'warn' } });
      agents.push({ child, endpoint: `https://${host}:${port}` });
    }
    const [a, b] = agents.map((x) => new AgentClient(x.endpoint, ctl, 120_000)) as [AgentClient, AgentClient];
    for (const c of [a, b]) await waitReady(c);
    const ticket = newTicket();
    const cpuBefore = await Promise.all(agents.map((x) => cpuSeconds(x.child.pid!)));
    await b.receive('sim-0', { migration: 'bench', op: 'prepare', ticket, sourceNode: 'node-a' });
    const started = performance.now();
    await a.send('sim-0', { migration: 'bench', op: 'send', ticket, target: { node: 'node-b', device: 'sim-0', endpoint: agents[1]!.endpoint } });
    let bytes = 0;
    // The long poll answers the moment the send ends: no polling in the agent's way while it streams.
    for (;;) {
      const s = (await a.migration('bench', 2000)).sessions[0];
      if (s?.phase === 'Verified') { bytes = s.bytes; break; }
      if (s?.phase === 'Failed') throw new Error(`relay failed: ${s.error?.message}`);
    }
    const seconds = (performance.now() - started) / 1000;
    const rss = await Promise.all(agents.map((x) => peakRss(x.child.pid!)));
    const cpu = (await Promise.all(agents.map((x) => cpuSeconds(x.child.pid!)))).map((c, i) => c - cpuBefore[i]!);
    a.close();
    b.close();
    return { bytes, MBps: bytes / MiB / seconds, peakRssMB: Math.max(...rss), rss, cpu };
  } finally {
    for (const x of agents) x.child.kill('SIGTERM');
  }
}

async function waitReady(c: AgentClient): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      await c.ready();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`agent at ${c.endpoint} did not become ready`);
}

/** CPU time (user + system, all threads) a process has used so far, in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime: fields 14 and 15, in USER_HZ (100)
}

async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
  return kb / 1024;
}

/** The baseline: one process writes `bytes` into a TLS socket, the other reads and drops them. */
async function baselineRun(dir: string, bytes: number): Promise<{ MBps: number; cpu: number[] }> {
  const sink = spawn(process.execPath, [self, '--role', 'tls-sink', '--dir', join(dir, 'pki')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const sinkExit = once(sink, 'exit');
  const [line] = (await once(sink.stdout, 'data')) as [Buffer];
  const port = Number(line.toString().trim());
  const source = spawn(process.execPath, [self, '--role', 'tls-source', '--dir', join(dir, 'pki'), '--port', String(port), '--bytes', String(bytes)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  source.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  let sunk = '';
  sink.stdout.on('data', (d: Buffer) => { sunk += d.toString(); });
  await once(source, 'exit');
  // The sink reports its CPU time and exits when the stream ends; a sink that never saw the end goes.
  const stuck = setTimeout(() => sink.kill(), 10_000);
  await sinkExit;
  clearTimeout(stuck);
  const [MBps, sourceCpu] = out.trim().split(' ').map(Number) as [number, number];
  return { MBps, cpu: [sourceCpu, Number(sunk.trim())] };
}

const cpuSince = (c: NodeJS.CpuUsage) => { const u = process.cpuUsage(c); return (u.user + u.system) / 1e6; };

async function tlsSink(pki: string): Promise<void> {
  const m = await load({ ca: join(pki, 'ca.crt'), cert: join(pki, 'agent-node-b.crt'), key: join(pki, 'agent-node-b.key') });
  const server = tlsServer({ ...m, requestCert: true, rejectUnauthorized: true }, (sock) => {
    const cpu = process.cpuUsage();
    sock.resume();
    sock.on('end', () => {
      process.stdout.write(`${cpuSince(cpu)}\n`);
      sock.end();
      server.close();
    });
  });
  server.listen(0, '127.0.0.3', () => process.stdout.write(`${(server.address() as { port: number }).port}\n`));
}

async function tlsSource(pki: string, port: number, bytes: number): Promise<void> {
  const m = await load({ ca: join(pki, 'ca.crt'), cert: join(pki, 'agent-node-a.crt'), key: join(pki, 'agent-node-a.key') });
  const sock = tlsConnect({ ...m, host: '127.0.0.3', port, servername: undefined });
  await once(sock, 'secureConnect');
  const chunk = Buffer.alloc(MiB, 7);
  const started = performance.now();
  const cpu = process.cpuUsage();
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    const n = Math.min(chunk.length, bytes - sent);
    if (!sock.write(n === chunk.length ? chunk : chunk.subarray(0, n))) await once(sock, 'drain');
  }
  sock.end();
  await once(sock, 'close');
  process.stdout.write(`${bytes / MiB / ((performance.now() - started) / 1000)} ${cpuSince(cpu)}\n`);
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

await main();
