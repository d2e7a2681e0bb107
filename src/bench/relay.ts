/**
 * `npm run bench:relay -- --size 1Gi -o json`: moves a simulated device's state between two agent
 * processes over TLS on loopback, then the same number of bytes through a plain TLS socket pipe between
 * two processes (same crypto, no HTTP/2, no digest, no device), and compares. Two more stages move the
 * same bytes through less of the relay (node:http2 alone; the relay's code with no device behind it),
 * so each run shows which part of the agents' time the baseline does not spend.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { createSecureServer } from 'node:http2';
import { connect as tlsConnect, createServer as tlsServer } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { AgentClient } from '../agentapi/client.js';
import { AGENT_NODE_FLAGS } from '../agent/config.js';
import { newTicket } from '../agent/identity.js';
import { formatBytes, parseQuantity } from '../api/quantity.js';
import { issue, load, type Material } from '../local/pki.js';
import { DEFAULT_DIGEST, type DigestAlgorithm } from '../relay/digest.js';
import { CHUNK, serverOptions } from '../relay/h2.js';
import { captureTrailers, receiveStream } from '../relay/receiver.js';
import { connectTarget, sendStream } from '../relay/sender.js';
import type { ResumeStream, SaveStream } from '../vfio/device.js';
import { SimDevice } from '../vfio/sim/device.js';
import { deviceMemoryRoot } from '../vfio/sim/memory.js';

const self = fileURLToPath(import.meta.url);
const devmig = fileURLToPath(new URL('../../bin/devmig.js', import.meta.url));
const MiB = 2 ** 20;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { size: { type: 'string', default: '1Gi' }, output: { type: 'string', short: 'o' }, digest: { type: 'string', default: DEFAULT_DIGEST },
      role: { type: 'string' }, port: { type: 'string' }, bytes: { type: 'string' }, dir: { type: 'string' } },
  });
  if (values.role) return role(values.role, values.dir!, Number(values.port), Number(values.bytes), values.digest as DigestAlgorithm);
  const size = parseQuantity(values.size, '--size');
  const json = values.output === 'json';
  const say = (t: string) => { if (!json) process.stderr.write(`${t}\n`); };
  const dir = await mkdtemp(join(await deviceMemoryRoot(), 'devmig-bench-'));
  try {
    const pki = join(dir, 'pki');
    const ctl = await load(await issue(pki, 'controller', 'controller'));
    say(`relay: ${formatBytes(size)} between two agent processes (digest ${values.digest})`);
    const relay = await relayRun(dir, pki, ctl, size, values.digest);
    // The agents' devices hold twice the state each (state and staging) in memory: free it first.
    await Promise.all(['node-a', 'node-b'].map((node) => rm(join(dir, node), { recursive: true, force: true })));
    const perGiB = (cpu: number[]) => cpu.map((c) => round(c / (relay.bytes / 2 ** 30), 2));
    say(`relay: ${relay.MBps.toFixed(0)} MB/s, agent peak RSS ${relay.peakRssMB.toFixed(0)} MB (source ${relay.rss[0]!.toFixed(0)}, target ${relay.rss[1]!.toFixed(0)}), ` +
      `CPU s/GiB source ${perGiB(relay.cpu)[0]}, target ${perGiB(relay.cpu)[1]}`);
    const baseline = await pairRun(dir, 'tls', relay.bytes, values.digest);
    say(`baseline TLS pipe: ${baseline.MBps.toFixed(0)} MB/s, CPU s/GiB source ${perGiB(baseline.cpu)[0]}, sink ${perGiB(baseline.cpu)[1]}`);
    const h2 = await pairRun(dir, 'h2', relay.bytes, values.digest);
    say(`node:http2 alone: ${h2.MBps.toFixed(0)} MB/s, CPU s/GiB source ${perGiB(h2.cpu)[0]}, sink ${perGiB(h2.cpu)[1]}`);
    const code = await pairRun(dir, 'relay', relay.bytes, values.digest);
    say(`relay code, no devices: ${code.MBps.toFixed(0)} MB/s, CPU s/GiB source ${perGiB(code.cpu)[0]}, target ${perGiB(code.cpu)[1]}`);
    const devices = await devicesRun(dir, Math.min(size, DEVICES_STAGE_MAX));
    say(`simulated devices alone (one process, no network): CPU s/GiB save ${devices.perGiB[0]}, resume ${devices.perGiB[1]}`);
    const stage = (x: { MBps: number; cpu: number[] }) => ({ MBps: round(x.MBps), ratio: round(x.MBps / baseline.MBps, 3), cpu_s_per_GiB: perGiB(x.cpu) });
    const out = {
      bytes: relay.bytes, relay_MBps: round(relay.MBps), baseline_MBps: round(baseline.MBps), ratio: round(relay.MBps / baseline.MBps, 3),
      agent_peak_rss_MB: round(relay.peakRssMB), digest: values.digest,
      // Where the time goes on a CPU-bound machine: CPU seconds per GiB moved, each side.
      cpu_s_per_GiB: { relay: perGiB(relay.cpu), baseline: perGiB(baseline.cpu) },
      // The same bytes through less of the relay, each against the same baseline: node:http2 alone,
      // then the relay's code (digest included) with no device behind either end.
      // And the simulated devices' own part: the source's data_fd reads and the target's writes.
      stages: { h2: stage(h2), relay_code: stage(code), devices: { cpu_s_per_GiB: devices.perGiB } },
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
        devices: { spare: ['*'], simulated: { dir: join(dir, node, 'sim'), devices: [{ name: 'sim-0', stateSize: size, pageSize: MiB }] } },
      };
      await writeFile(join(dir, `${node}.json`), JSON.stringify(cfg));
      const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, devmig, 'agent', '--config', join(dir, `${node}.json`)], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DEVMIG_LOG_LEVEL: 'warn' } });
      agents.push({ child, endpoint: `https://${host}:${port}` });
    }
    const [a, b] = agents.map((x, i) => new AgentClient(x.endpoint, ctl, i === 0 ? 'node-a' : 'node-b', 120_000)) as [AgentClient, AgentClient];
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
    // An agent that stops closes its devices, and a device closed mid-migration resets (rewrites its
    // state): that must be over before the next stage is timed, or it takes the CPUs the stage is
    // measured on.
    await Promise.all(agents.map((x) => stopped(x.child)));
  }
}

async function stopped(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exit = once(child, 'exit');
  child.kill('SIGTERM');
  const late = setTimeout(() => child.kill('SIGKILL'), 60_000);
  await exit;
  clearTimeout(late);
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

/**
 * A pair of processes, `<kind>-sink` and `<kind>-source`, moving `bytes`: the sink prints its port,
 * the source connects and prints "MB/s cpu-seconds", the sink prints its CPU seconds when the stream ends.
 *   tls    the baseline: a plain TLS socket pipe (same crypto, no HTTP/2, no digest, no device)
 *   h2     node:http2 with the agents' settings (windows, frame size, session memory), nothing else
 *   relay  the relay's own code (sendStream, receiveStream: chunking, backpressure, batching, digest,
 *          trailers) between a source that copies from memory and a target that drops: no device
 * Between them they say where the agents' time goes that the baseline does not spend.
 */
async function pairRun(dir: string, kind: 'tls' | 'h2' | 'relay', bytes: number, digest: string): Promise<{ MBps: number; cpu: number[] }> {
  const args = (role: string) => [self, '--role', `${kind}-${role}`, '--dir', join(dir, 'pki'), '--digest', digest];
  // The baseline runs as a plain node; the HTTP/2 stages with the agents' flags, as agents would.
  const flags = kind === 'tls' ? [] : AGENT_NODE_FLAGS;
  const sink = spawn(process.execPath, [...flags, ...args('sink')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const sinkExit = once(sink, 'exit');
  const [line] = (await once(sink.stdout, 'data')) as [Buffer];
  const port = Number(line.toString().trim());
  const source = spawn(process.execPath, [...flags, ...args('source'), '--port', String(port), '--bytes', String(bytes)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  source.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  let sunk = '';
  sink.stdout.on('data', (d: Buffer) => { sunk += d.toString(); });
  const [code] = (await once(source, 'exit')) as [number | null];
  // The sink reports its CPU time and exits when the stream ends; a sink that never saw the end goes.
  const stuck = setTimeout(() => sink.kill(), 10_000);
  await sinkExit;
  clearTimeout(stuck);
  if (code !== 0) throw new Error(`the ${kind} source failed (exit ${code})`);
  const [MBps, sourceCpu] = out.trim().split(' ').map(Number) as [number, number];
  return { MBps, cpu: [sourceCpu, Number(sunk.trim())] };
}

/**
 * The simulated devices' own cost: a source's data_fd read into a target's, in a child process. Per
 * GiB it does not depend on the size (every page costs the same), and two more devices of a 4 GiB
 * state would hold 16 GiB of memory: so at most 1 GiB.
 */
const DEVICES_STAGE_MAX = 2 ** 30;
async function devicesRun(dir: string, size: number): Promise<{ perGiB: number[] }> {
  const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, self, '--role', 'devices', '--dir', join(dir, 'devices'), '--bytes', String(size)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`the devices stage failed (exit ${code})`);
  const [bytes, ...cpu] = out.trim().split(' ').map(Number) as [number, number, number];
  return { perGiB: cpu.map((c) => round(c / (bytes / 2 ** 30), 2)) };
}

/**
 * Streams one simulated device's state into another through one buffer of the relay's chunk size,
 * and commits it (the target's RESUMING -> STOP checks it whole). Prints the CPU seconds the reads
 * and the writes took: both run on other threads too (the state is a file), so each is timed alone.
 */
async function devicesStage(dir: string, size: number): Promise<void> {
  const source = await SimDevice.open({ dir, name: 'source', stateSize: size, pageSize: MiB });
  const target = await SimDevice.open({ dir, name: 'target', stateSize: size, pageSize: MiB });
  try {
    const save = (await source.setState('STOP_COPY')).stream as SaveStream;
    const resume = (await target.setState('RESUMING')).stream as ResumeStream;
    const buf = Buffer.allocUnsafe(CHUNK);
    let bytes = 0;
    let reads = 0;
    let writes = 0;
    for (;;) {
      let c = process.cpuUsage();
      const n = await save.read(buf);
      reads += cpuSince(c);
      if (n === 'ENOMSG') throw new Error('the source answered ENOMSG in STOP_COPY');
      if (n === 0) break;
      c = process.cpuUsage();
      await resume.write(buf.subarray(0, n));
      writes += cpuSince(c);
      bytes += n;
    }
    const commit = await target.setState('STOP');
    if (commit.error) throw commit.error;
    process.stdout.write(`${bytes} ${reads} ${writes}\n`);
    // Closed while not RUNNING, a simulated device resets (rewrites its whole state), as a kernel does.
    for (const d of [source, target]) await d.setState('RUNNING');
  } finally {
    await source.close();
    await target.close();
  }
}

function role(name: string, dir: string, port: number, bytes: number, digest: DigestAlgorithm): Promise<void> {
  switch (name) {
    case 'tls-sink': return tlsSink(dir);
    case 'tls-source': return tlsSource(dir, port, bytes);
    case 'h2-sink': return h2Sink(dir, 'h2', digest);
    case 'h2-source': return h2Source(dir, 'h2', port, bytes, digest);
    case 'relay-sink': return h2Sink(dir, 'relay', digest);
    case 'relay-source': return h2Source(dir, 'relay', port, bytes, digest);
    case 'devices': return devicesStage(dir, bytes);
    default: throw new Error(`--role ${name}: unknown (an internal flag of the benchmark)`);
  }
}

const cpuSince = (c: NodeJS.CpuUsage) => { const u = process.cpuUsage(c); return (u.user + u.system) / 1e6; };

/** The sink's TLS material (agent-node-b's, valid for 127.0.0.3) and the source's (agent-node-a's). */
const material = (pki: string, node: 'node-a' | 'node-b') =>
  load({ ca: join(pki, 'ca.crt'), cert: join(pki, `agent-${node}.crt`), key: join(pki, `agent-${node}.key`) });
const SINK_HOST = '127.0.0.3';

/** Listens on SINK_HOST and prints the port, for pairRun to hand to the source. */
function listening(server: { listen(port: number, host: string, cb: () => void): unknown; address(): unknown }): void {
  server.listen(0, SINK_HOST, () => process.stdout.write(`${(server.address() as { port: number }).port}\n`));
}

async function tlsSink(pki: string): Promise<void> {
  const server = tlsServer({ ...await material(pki, 'node-b'), requestCert: true, rejectUnauthorized: true }, (sock) => {
    const cpu = process.cpuUsage();
    sock.resume();
    sock.on('end', () => {
      process.stdout.write(`${cpuSince(cpu)}\n`);
      sock.end();
      server.close();
    });
  });
  listening(server);
}

async function tlsSource(pki: string, port: number, bytes: number): Promise<void> {
  const sock = tlsConnect({ ...await material(pki, 'node-a'), host: SINK_HOST, port, servername: undefined });
  await once(sock, 'secureConnect');
  const started = performance.now();
  const cpu = process.cpuUsage();
  await writeAll(sock, bytes);
  sock.end();
  await once(sock, 'close');
  process.stdout.write(`${bytes / MiB / ((performance.now() - started) / 1000)} ${cpuSince(cpu)}\n`);
}

/** Writes `bytes` of filler into `w` in 1 MiB writes, waiting for room whenever it is full. */
async function writeAll(w: Writable, bytes: number): Promise<void> {
  const chunk = Buffer.alloc(MiB, 7);
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    const n = Math.min(chunk.length, bytes - sent);
    if (!w.write(n === chunk.length ? chunk : chunk.subarray(0, n))) await once(w, 'drain');
  }
}

/** The h2 and relay sinks: one stream, answered like the agent answers, then the CPU it took. */
async function h2Sink(pki: string, kind: 'h2' | 'relay', digest: DigestAlgorithm): Promise<void> {
  const opts = serverOptions(await material(pki, 'node-b'));
  const server = createSecureServer(opts);
  server.on('session', (session) => session.setLocalWindowSize(opts.settings?.initialWindowSize ?? 65535));
  server.on('stream', (stream) => {
    const cpu = process.cpuUsage();
    const finish = (status: number, body: unknown) => {
      process.stdout.write(`${cpuSince(cpu)}\n`);
      stream.respond({ ':status': status, 'content-type': 'application/json' });
      stream.end(JSON.stringify(body));
      server.close();
    };
    if (kind === 'h2') {
      stream.resume();
      stream.once('end', () => finish(200, { verified: true }));
      return;
    }
    const drop: ResumeStream = { kind: 'resume', write: () => Promise.resolve(), close: () => Promise.resolve() };
    receiveStream(stream, drop, { algorithm: digest, signal: new AbortController().signal, trailers: captureTrailers(stream), idleMs: 60_000 }).then(
      (got) => finish(200, { verified: true, ...got }),
      (e: unknown) => finish(422, { verified: false, error: 'StreamMismatch', message: (e as Error).message }));
  });
  listening(server);
}

async function h2Source(pki: string, kind: 'h2' | 'relay', port: number, bytes: number, digest: DigestAlgorithm): Promise<void> {
  const tls = await material(pki, 'node-a');
  const endpoint = `https://${SINK_HOST}:${port}`;
  const signal = new AbortController().signal;
  const session = await connectTarget(endpoint, 'node-b', tls, signal);
  const started = performance.now();
  const cpu = process.cpuUsage();
  if (kind === 'relay') {
    // A device read is a copy into the reader's buffer: this one copies from memory.
    const state = Buffer.alloc(MiB, 7);
    let left = bytes;
    const save: SaveStream = {
      kind: 'save',
      read: (buf) => {
        const n = Math.min(buf.length, state.length, left);
        state.copy(buf, 0, 0, n);
        left -= n;
        return Promise.resolve(n);
      },
      close: () => Promise.resolve(),
    };
    const sent = await sendStream(save, { endpoint, node: 'node-b', tls, migration: 'bench', device: 'null', ticket: 'none', algorithm: digest, signal }, session);
    if (sent.bytes !== bytes) throw new Error(`the relay moved ${sent.bytes} bytes, not ${bytes}`);
  } else {
    const req = session.request({ ':method': 'PUT', ':path': '/' });
    req.resume();
    await writeAll(req, bytes);
    req.end();
    await once(req, 'end');
    session.close();
  }
  process.stdout.write(`${bytes / MiB / ((performance.now() - started) / 1000)} ${cpuSince(cpu)}\n`);
}

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

await main();
