/**
 * The guest's supervisor for `devmig local up --kernel` (run by the guest's run.sh, as root in the
 * guest): it makes the nodes' mtty mdevs, forwards the API server's port from the guest's loopback
 * to the host's (10.0.2.2 inside QEMU), starts one agent per node, and serves a small control API
 * on a port QEMU forwards from the host's loopback:
 *
 *   GET  /v1/agents                          each node's agent: pid, running
 *   GET  /v1/marker?node=N&device=D          the device's scratch registers, hex, one byte per port
 *   PUT  /v1/marker?node=N&device=D&set=HEX  writes them
 *   POST /v1/poweroff                        stops the agents, then the guest powers off
 *
 * Every request carries the plan's token (Authorization: Bearer). The marker is read through copies
 * of the device fd taken from the node's fd holder (pidfd_getfd), so the agent's hold on the device
 * and its migration state are never disturbed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createTcpServer } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { takeFds } from '../../agent/fdpass.js';
import { findHolder, readHeld } from '../../agent/holder.js';
import { AGENT_NODE_FLAGS } from '../../agent/config.js';
import { adoptKernelDevice } from '../../vfio/kernel.js';
import { createMdev, mttyPorts, parseMarker, readScratch, writeScratch, type MttyType } from './mtty.js';

const devmigBin = fileURLToPath(new URL('../../../bin/devmig.js', import.meta.url));

export interface GuestPlan {
  readonly token: string;
  readonly controlPort: number;
  /** TCP forwards inside the guest: the agents' kubeconfig names the API server as the host has it. */
  readonly forwards: ReadonlyArray<{ readonly listen: { host: string; port: number }; readonly to: { host: string; port: number } }>;
  readonly nodes: ReadonlyArray<{
    readonly node: string;
    /** The agent's config file and log, in the run's shared directory. */
    readonly config: string;
    readonly log: string;
    readonly stateDir: string;
    readonly devices: ReadonlyArray<{ readonly name: string; readonly uuid: string; readonly type: MttyType }>;
  }>;
}

const agents = new Map<string, ChildProcess>();

function forward(f: GuestPlan['forwards'][number]): Promise<void> {
  const server = createTcpServer((c) => {
    const up = connect(f.to.port, f.to.host);
    c.pipe(up).pipe(c);
    const end = () => { c.destroy(); up.destroy(); };
    c.on('error', end);
    up.on('error', end);
  });
  return new Promise((resolve, reject) => server.once('error', reject).listen(f.listen.port, f.listen.host, resolve));
}

let stopping = false;

/**
 * Starts a node's agent, and again after it exits, as a kubelet restarts a DaemonSet's pod: a backoff
 * from 1 s doubling to 30 s. Under TCG a Node process starts slowly: its fd holder gets 5 minutes.
 */
function startAgent(n: GuestPlan['nodes'][number], backoffMs = 1000): void {
  const log = openSync(n.log, 'a');
  const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, devmigBin, 'agent', '--config', n.config], {
    stdio: ['ignore', log, log], env: { ...process.env, DEVMIG_HOLDER_START_SECONDS: '300' },
  });
  const started = Date.now();
  agents.set(n.node, child);
  child.on('exit', (code, signal) => {
    process.stdout.write(`guestd: agent ${n.node} exited (${signal ?? code})\n`);
    if (stopping) return;
    // A run that lasted a while starts the backoff over.
    const next = Date.now() - started > 60_000 ? 1000 : Math.min(backoffMs * 2, 30_000);
    setTimeout(() => startAgent(n, next), backoffMs).unref();
  });
}

/** A KernelDevice over copies of the fds the node's holder keeps for `device`. */
async function heldDevice(plan: GuestPlan, node: string, device: string) {
  const n = plan.nodes.find((x) => x.node === node);
  const d = n?.devices.find((x) => x.name === device);
  if (!n || !d) throw new HttpError(404, `no device ${device} on node ${node} (${plan.nodes.map((x) => `${x.node}: ${x.devices.map((y) => y.name).join(', ')}`).join('; ')})`);
  const holder = await findHolder(n.stateDir);
  const fds = holder ? (await readHeld(n.stateDir, holder))[device] : undefined;
  if (!holder || !fds) throw new HttpError(503, `the agent of ${node} does not hold ${device} yet (no fd holder has it); wait for the agent to be ready`);
  return { dev: adoptKernelDevice(device, takeFds(holder, fds)), ports: mttyPorts(d.type) };
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

async function handle(plan: GuestPlan, req: IncomingMessage, res: ServerResponse): Promise<unknown> {
  const auth = Buffer.from(req.headers.authorization ?? '');
  const want = Buffer.from(`Bearer ${plan.token}`);
  if (auth.length !== want.length || !timingSafeEqual(auth, want)) throw new HttpError(401, 'a bearer token from the local environment is needed');
  const url = new URL(req.url ?? '/', 'http://guest');
  if (url.pathname === '/v1/agents' && req.method === 'GET') {
    return { agents: plan.nodes.map((n) => ({ node: n.node, pid: agents.get(n.node)?.pid, running: agents.get(n.node)?.exitCode === null })) };
  }
  if (url.pathname === '/v1/marker') {
    const node = url.searchParams.get('node') ?? '';
    const device = url.searchParams.get('device') ?? '';
    const { dev, ports } = await heldDevice(plan, node, device);
    try {
      if (req.method === 'PUT') {
        let bytes: Buffer;
        try {
          bytes = parseMarker(url.searchParams.get('set') ?? '', ports);
        } catch (e) {
          throw new HttpError(400, (e as Error).message);
        }
        writeScratch(dev, bytes);
      } else if (req.method !== 'GET') throw new HttpError(405, 'GET or PUT');
      return { node, device, ports, marker: readScratch(dev, ports).toString('hex'), state: await dev.getState() };
    } finally {
      await dev.close(); // our copies only: the holder and the agent keep the device open
    }
  }
  if (url.pathname === '/v1/poweroff' && req.method === 'POST') {
    res.on('finish', () => void powerOff());
    return { poweringOff: true };
  }
  throw new HttpError(404, `no ${req.method} ${url.pathname}`);
}

async function powerOff(): Promise<never> {
  stopping = true;
  for (const a of agents.values()) a.kill('SIGTERM');
  const deadline = Date.now() + 20_000;
  while ([...agents.values()].some((a) => a.exitCode === null && a.signalCode === null) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  process.exit(0);
}

async function main(planFile: string): Promise<void> {
  const plan = JSON.parse(await readFile(planFile, 'utf8')) as GuestPlan;
  for (const f of plan.forwards) await forward(f);
  for (const n of plan.nodes) for (const d of n.devices) await createMdev(d.uuid, d.type);
  for (const n of plan.nodes) startAgent(n);
  const server = createHttpServer((req, res) => {
    handle(plan, req, res).then((body) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    }, (e: unknown) => {
      res.writeHead(e instanceof HttpError ? e.status : 500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: (e as Error).message }));
    });
  });
  await new Promise<void>((resolve) => server.listen(plan.controlPort, '0.0.0.0', resolve));
  process.on('SIGTERM', () => void powerOff());
  process.stdout.write(`guestd: ready; ${plan.nodes.length} agents started, control on port ${plan.controlPort}\n`);
}

main(process.argv[2] ?? '').catch((e: unknown) => {
  process.stderr.write(`guestd: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
