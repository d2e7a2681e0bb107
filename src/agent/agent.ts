/**
 * The agent: wiring only. It opens the node's devices (through the fd holder), reconciles what its
 * journal says it was doing, and serves the control and data API until told to drain.
 */
import { readFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Http2SecureServer } from 'node:http2';
import type { Logger } from 'pino';
import type { TlsMaterial } from '../relay/h2.js';
import type { AgentConfig } from './config.js';
import type { AgentContext } from './context.js';
import { openDevices } from './devices.js';
import { ensureHolder } from './holder.js';
import { Journal } from './journal.js';
import type { DeviceNodePublisher } from './publish.js';
import { createAgentServer } from './server.js';
import { SessionTable } from './sessions.js';

export interface AgentOptions {
  readonly log: Logger;
  /** The devmig executable, to start the fd holder with. */
  readonly devmigBin: string;
}

export class Agent {
  private publisher: DeviceNodePublisher | undefined;

  private constructor(readonly ctx: AgentContext, private readonly server: Http2SecureServer) {}

  static async start(config: AgentConfig, opts: AgentOptions): Promise<Agent> {
    const tls = await loadTls(config);
    const holder = config.holder ? await ensureHolder(config.stateDir, opts.devmigBin) : undefined;
    const journal = await Journal.open(config.stateDir);
    const devices = await openDevices(config, holder, opts.log);
    const ctx: AgentContext = { config, devices, journal, sessions: new SessionTable(), tls, log: opts.log, draining: false };
    await reconcile(ctx);
    const server = createAgentServer(ctx);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.listen.port, config.listen.host, () => resolve());
    });
    const agent = new Agent(ctx, server);
    if (config.kube) {
      // Loaded only when publishing: importing the Kubernetes client adds ~50 MB of RSS (75 -> 125).
      const { DeviceNodePublisher } = await import('./publish.js');
      agent.publisher = new DeviceNodePublisher(ctx, config.kube.kubeconfig, agent.endpoint, config.kube.heartbeatSeconds * 1000);
      await agent.publisher.start();
    }
    opts.log.info({ node: config.node, endpoint: agent.endpoint, devices: devices.list().map((d) => d.name), holder }, 'agent ready');
    return agent;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get endpoint(): string {
    return this.ctx.config.advertise ?? `https://${this.ctx.config.listen.host}:${this.port}`;
  }

  /** Graceful shutdown: new work gets 503, sessions in flight get drainSeconds to finish. */
  async stop(): Promise<void> {
    this.ctx.draining = true;
    this.publisher?.stop();
    await this.publisher?.publish(false).catch((e: unknown) => this.ctx.log.warn({ err: (e as Error).message }, 'could not mark the DeviceNode not ready'));
    const deadline = Date.now() + this.ctx.config.drainSeconds * 1000;
    while (this.ctx.sessions.active().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of this.ctx.sessions.active()) s.abort.abort(new Error('agent shutting down'));
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.ctx.devices.closeAll();
  }
}

async function loadTls(config: AgentConfig): Promise<TlsMaterial> {
  const [ca, cert, key] = await Promise.all([readFile(config.tls.ca), readFile(config.tls.cert), readFile(config.tls.key)]);
  return { ca, cert, key };
}

/**
 * What the journal says was in flight when the last agent process ended. Data sessions died with it;
 * a commit that was under way is settled by the device's state: STOP means RESUMING -> STOP happened.
 */
async function reconcile(ctx: AgentContext): Promise<void> {
  for (const e of ctx.journal.all()) {
    if (!e.migration || !ctx.devices.get(e.device)) continue;
    const state = await ctx.devices.get(e.device)!.device.getState();
    let step = e.step;
    if (e.step === 'commit:intent') step = state === 'STOP' ? 'commit:done' : 'commit:interrupted';
    else if (e.step?.endsWith(':streaming') || e.step?.endsWith(':waiting') || e.step?.endsWith(':open')) step = `${e.step}>interrupted`;
    if (step !== e.step) await ctx.journal.step(e.device, { step });
    ctx.log.info({ device: e.device, migration: e.migration, role: e.role, step, state }, 'reconciled device from the journal');
  }
}
