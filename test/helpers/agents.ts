/** Real agents for tests: a CA and certificates (src/local/pki.ts), agents on loopback addresses, port 0. */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Agent } from '../../src/agent/agent.js';
import { AgentClient } from '../../src/agentapi/client.js';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.js';
import { issue, load, type Material } from '../../src/local/pki.js';
import { devmigBin } from './cli.js';

export interface Pki {
  readonly dir: string;
  controller: Material;
  agent(node: string): Promise<Material>;
  /** A certificate from another CA, with a trusted-looking name. */
  rogue: Material;
}

/** A test file's scratch directory with the installation's PKI in it: made before its tests, removed after them. */
export function scratchWithPki(name: string): { readonly dir: string; readonly pki: Pki } {
  let dir = '';
  let pki: Pki | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `devmig-${name}-`));
    pki = await makePki(dir);
  });
  afterAll(async () => { await rm(dir, { recursive: true, force: true }); });
  return { get dir() { return dir; }, get pki() { return pki!; } };
}

export async function makePki(dir: string): Promise<Pki> {
  const pkiDir = join(dir, 'pki');
  const controller = await load(await issue(pkiDir, 'controller', 'controller'));
  const rogueFiles = await issue(join(dir, 'rogue-pki'), 'controller', 'controller');
  const rogue = { ...(await load(rogueFiles)), ca: controller.ca };
  return {
    dir: pkiDir,
    controller,
    rogue,
    agent: async (node) => load(await issue(pkiDir, `agent-${node}`, `agent:${node}`, { ips: ['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4'] })),
  };
}

export interface SimSpec { name: string; stateSize?: string; dirtyRate?: string; flags?: string[] }

/** `extra.spare` (default every device) is the config's devices.spare, `extra.devices` more device sources; other keys are top-level settings. */
export async function agentConfig(dir: string, pki: Pki, node: string, host: string, devices: SimSpec[], extra: Record<string, unknown> = {}): Promise<AgentConfig> {
  await pki.agent(node);
  const { spare = ['*'], devices: more = {}, ...rest } = extra as { spare?: string[]; devices?: Record<string, unknown> };
  const raw = {
    node,
    listen: { host, port: 0 },
    stateDir: join(dir, node, 'state'),
    tls: { ca: join(pki.dir, 'ca.crt'), cert: join(pki.dir, `agent-${node}.crt`), key: join(pki.dir, `agent-${node}.key`) },
    holder: false,
    drainSeconds: 2,
    devices: {
      spare, ...(devices.length ? { simulated: { dir: join(dir, node, 'sim'), devices: devices.map((d) => ({ stateSize: '4Mi', ...d })) } } : {}), ...more,
    },
    ...rest,
  };
  await mkdir(join(dir, node), { recursive: true });
  await writeFile(join(dir, node, 'agent.json'), JSON.stringify(raw));
  return parseAgentConfig(raw);
}

export const quietLog = pino({ level: process.env.DEVMIG_TEST_LOG ?? 'silent' });

export async function startAgent(config: AgentConfig): Promise<Agent> {
  return Agent.start(config, { log: quietLog, devmigBin });
}

export function controllerClient(agent: { endpoint: string; ctx: { config: { node: string } } }, pki: Pki): AgentClient {
  return new AgentClient(agent.endpoint, pki.controller, agent.ctx.config.node, 10_000);
}

export async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 20_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
