/**
 * `devmig local up --kernel`: the local environment with its agents on real mtty devices, in one QEMU
 * guest (src/local/guest). The API server and the controller stay on the host; the guest runs one
 * agent per node, each owning its own mdevs (devices.kernel.include), on a port of its own.
 *
 * Addresses line up as on a cluster: node-K's Node object has the InternalIP 127.P.(K+1), its agent
 * advertises https://127.P.(K+1):(9442+K), and QEMU forwards that address and port from the host's
 * loopback into the guest; inside the guest the same address is the guest's own loopback, where the
 * agent listens too. So the controller on the host and the other agents in the guest dial the same
 * endpoint, and the certificate the agent asks for (CN agent:<node>, SAN 127.P.(K+1)) passes the
 * controller's check against the Node's addresses, unchanged. The agents reach the API server at the
 * address their kubeconfig names (127.0.0.1:PORT) through a forward guestd keeps to 10.0.2.2:PORT,
 * the host's loopback as QEMU shows it.
 *
 * One guest for all nodes: under TCG two guests on two cores each pay for their own kernel and
 * their own Node processes, and one guest's agents stream to each other over its loopback.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { alive } from '../vfio/sim/lock.js';
import type { Kube } from '../kube/kube.js';
import { ensureGuest, type GuestKernel } from './guest/artifacts.js';
import type { GuestPlan } from './guest/guestd.js';
import type { MttyType } from './guest/mtty.js';
import { startGuest, type Forward } from './guest/qemu.js';
import { serviceAccountToken, tokenKubeconfig, type InstallIdentity } from './identity.js';

const repo = fileURLToPath(new URL('../../', import.meta.url)).replace(/\/$/, '');
const AGENT_PORT = 9443;
const CONTROL_GUEST_PORT = 9000;

export interface GuestState {
  readonly pid: number;
  readonly kernel: GuestKernel;
  /** The directory shared read-write with the guest: plan, agent configs and logs. */
  readonly dir: string;
  /** guestd's control API, forwarded to the host's loopback, and its token. */
  readonly control: string;
  readonly token: string;
  readonly console: string;
  readonly devices: Record<string, Array<{ name: string; uuid: string; type: MttyType }>>;
}

export interface KernelAgents {
  readonly agents: Array<{ node: string; pid: number; endpoint: string; simDir: string; stateDir: string }>;
  readonly guest: GuestState;
}

export interface KernelEnvOptions {
  readonly dir: string;
  readonly kube: Kube;
  readonly id: InstallIdentity;
  readonly nodes: string[];
  readonly hosts: string[];
  readonly kernel: GuestKernel;
  /** mtty types per node (default: `devices` two-port mtty-2 devices on each). */
  readonly devices: number;
  readonly deviceTypes?: Record<string, MttyType[]>;
  readonly controlPort: number;
  readonly say: (line: string) => void;
}

/** mdev UUIDs that say where they belong: 6d747479 is "mtty", then the node's and the device's number. */
export function mttyUuid(node: number, device: number): string {
  return `6d747479-0000-4000-8000-${node.toString(16).padStart(6, '0')}${device.toString(16).padStart(6, '0')}`;
}

export async function startKernelAgents(o: KernelEnvOptions): Promise<KernelAgents> {
  const files = await ensureGuest(o.kernel, o.say);
  const share = join(o.dir, 'guest');
  await mkdir(join(share, 'logs'), { recursive: true });
  const token = randomBytes(24).toString('base64url');
  const forwards: Forward[] = [{ host: '127.0.0.1', hostPort: o.controlPort, guestPort: CONTROL_GUEST_PORT }];
  const planNodes: Array<GuestPlan['nodes'][number]> = [];
  const agents: KernelAgents['agents'] = [];
  const devices: GuestState['devices'] = {};
  for (const [i, node] of o.nodes.entries()) {
    const host = o.hosts[i]!;
    const port = AGENT_PORT + i;
    const types = o.deviceTypes?.[node] ?? Array.from({ length: o.devices }, (): MttyType => 'mtty-2');
    devices[node] = types.map((type, d) => ({ name: `mdev-${mttyUuid(i + 1, d)}`, uuid: mttyUuid(i + 1, d), type }));
    const stateDir = `/run/devmig/${node}`; // the guest's tmpfs: the node's disk lives as long as its devices
    const token = await serviceAccountToken(o.kube, o.id.namespace, o.id.agentServiceAccount, node);
    const kubeconfig = await tokenKubeconfig(o.kube, token, `${o.id.agentServiceAccount}@${node}`, join(share, `${node}.kubeconfig`));
    const endpoint = `https://${host}:${port}`;
    const cfg = {
      node, listen: { host: '0.0.0.0', port }, advertise: endpoint, stateDir,
      tls: { kubernetes: { namespace: o.id.namespace } },
      kube: { kubeconfig, heartbeatSeconds: 2 },
      // guestd makes these mdevs as the guest boots: they hold nothing yet, so they are spare.
      devices: { spare: ['*'], kernel: { include: devices[node].map((d) => d.name) } },
    };
    const config = join(share, `${node}.agent.json`);
    await writeFile(config, JSON.stringify(cfg, null, 2));
    planNodes.push({ node, config, log: join(share, 'logs', `agent-${node}.log`), stateDir, devices: devices[node] });
    forwards.push({ host, hostPort: port, guestPort: port });
    agents.push({ node, pid: 0, endpoint, simDir: '', stateDir });
  }
  const plan: GuestPlan = { token, controlPort: CONTROL_GUEST_PORT, forwards: [await apiserverForward(o.kube)], nodes: planNodes };
  const planFile = join(share, 'plan.json');
  await writeFile(planFile, JSON.stringify(plan, null, 2), { mode: 0o600 });
  const script = join(share, 'run.sh');
  await writeFile(script, [
    `export HOME=/tmp/home PATH=${repo}/node_modules/.bin:/usr/local/bin:/usr/bin:/bin`,
    'mkdir -p "$HOME"',
    `cd ${repo}`,
    `exec node dist/local/guest/guestd.js ${planFile}`,
  ].join('\n'));
  const consoleLog = join(o.dir, 'logs', 'guest-console.log');
  const pid = await startGuest({ files, out: share, script, forwards, consoleLog, memoryMiB: 2048 });
  o.say(`booted the ${o.kernel} guest (${files.release}, qemu pid ${pid}; console ${consoleLog}); its agents start on mtty mdevs`);
  return { agents, guest: { pid, kernel: o.kernel, dir: share, control: `http://127.0.0.1:${o.controlPort}`, token, console: consoleLog, devices } };
}

/** guest 127.0.0.1:PORT -> host 127.0.0.1:PORT, which QEMU's user network calls 10.0.2.2. */
async function apiserverForward(kube: Kube): Promise<GuestPlan['forwards'][number]> {
  const server = new URL(kube.config.getCurrentCluster()!.server);
  const port = Number(server.port);
  if (server.hostname !== '127.0.0.1') throw new Error(`the local API server is at ${server.hostname}; the guest reaches only the host's loopback`);
  return { listen: { host: '127.0.0.1', port }, to: { host: '10.0.2.2', port } };
}

/** Asks guestd for something; errors carry its message. */
export async function guestControl(g: GuestState, path: string, method = 'GET'): Promise<Record<string, unknown>> {
  const r = await fetch(`${g.control}${path}`, { method, headers: { authorization: `Bearer ${g.token}` }, signal: AbortSignal.timeout(30_000) });
  const body = (await r.json().catch(() => ({}))) as Record<string, unknown>;
  if (!r.ok) throw new Error(`guest ${method} ${path}: ${typeof body.error === 'string' ? body.error : `HTTP ${r.status}`}`);
  return body;
}

/** Powers the guest off (its agents stop first); kills QEMU if it does not end in a minute. */
export async function stopGuest(g: GuestState, say: (line: string) => void): Promise<void> {
  if (!alive(g.pid)) return;
  await guestControl(g, '/v1/poweroff', 'POST').catch((e: unknown) => say(`the guest did not take the power-off (${(e as Error).message}); stopping QEMU`));
  for (let i = 0; i < 600 && alive(g.pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive(g.pid)) process.kill(g.pid, 'SIGKILL');
  say(`stopped the ${g.kernel} guest (qemu pid ${g.pid})`);
}
