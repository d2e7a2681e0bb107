/**
 * The agent: wiring only. It opens the node's devices (through the fd holder), reconciles what its
 * journal says it was doing, and serves the control and data API until told to drain.
 */
import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isIP, type AddressInfo } from 'node:net';
import type { Http2SecureServer } from 'node:http2';
import type { Logger } from 'pino';
import type { TlsMaterial } from '../relay/h2.js';
import type { AgentConfig } from './config.js';
import type { AgentCertificate } from './certs.js';
import type { AgentContext } from './context.js';
import { openDevices } from './devices.js';
import { awaitHolder, ensureHolder } from './holder.js';
import { Journal } from './journal.js';
import type { DeviceNodePublisher } from './publish.js';
import { createAgentServer } from './server.js';
import { SessionTable } from './sessions.js';
import { commitFound } from './target.js';
import { holding, recordFirstSight } from './occupancy.js';
import { nodeDeviceOf, PodResourcesWatch } from './allocations.js';

export interface AgentOptions {
  readonly log: Logger;
  /** The devmig executable, to start the fd holder with. */
  readonly devmigBin: string;
}

export class Agent {
  private publisher: DeviceNodePublisher | undefined;
  private podResources: PodResourcesWatch | undefined;
  private renewal: NodeJS.Timeout | undefined;

  private constructor(readonly ctx: AgentContext, private readonly server: Http2SecureServer) {}

  static async start(config: AgentConfig, opts: AgentOptions): Promise<Agent> {
    const issued = 'kubernetes' in config.tls ? await clusterCertificate(config, opts.log) : undefined;
    const tls = issued ?? (await loadTls(config));
    const holder = config.holder === 'external' ? await awaitHolder(config.stateDir)
      : config.holder ? await ensureHolder(config.stateDir, opts.devmigBin) : undefined;
    const journal = await Journal.open(config.stateDir);
    const devices = await openDevices(config, holder, opts.log);
    const ctx: AgentContext = { config, devices, journal, sessions: new SessionTable(), tls, log: opts.log, draining: false };
    await reconcile(ctx);
    await recordFirstSight(ctx);
    // Its first answer comes before the publisher exists; later changes publish the DeviceNode at once.
    let allocationsChanged = (): void => undefined;
    const podResources = config.podResources
      ? new PodResourcesWatch(config.podResources, () => devices.list().map(nodeDeviceOf), opts.log, () => allocationsChanged())
      : undefined;
    if (podResources) {
      ctx.allocations = podResources;
      await podResources.start();
    }
    const server = createAgentServer(ctx);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.listen.port, config.listen.host, () => resolve());
    });
    const agent: Agent = new Agent(ctx, server);
    agent.podResources = podResources;
    if (issued) agent.renewAt(issued.notAfter);
    if (config.kube) {
      // Loaded only when publishing: importing the Kubernetes client adds ~50 MB of RSS (75 -> 125).
      const { DeviceNodePublisher } = await import('./publish.js');
      agent.publisher = new DeviceNodePublisher(ctx, config.kube.kubeconfig, agent.endpoint, config.kube.heartbeatSeconds * 1000, config.kube.ownerClusterRole);
      await agent.publisher.start();
      // What a device holds is what the controller picks targets by: published as soon as it changes.
      const publisher = agent.publisher;
      journal.onOccupancy = () => publisher.soon();
      allocationsChanged = () => publisher.soon();
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

  /** A new key and certificate before this one expires; new connections use them, live ones go on. */
  private renewAt(notAfter: Date): void {
    this.renewal = setTimeout(() => {
      clusterCertificate(this.ctx.config, this.ctx.log, false).then((next) => {
        this.ctx.tls = { ca: next.ca, cert: next.cert, key: next.key };
        this.server.setSecureContext({ ca: next.ca, cert: next.cert, key: next.key });
        this.ctx.log.info({ csr: next.csrName, notAfter: next.notAfter }, 'renewed the agent certificate');
        this.renewAt(next.notAfter);
      }, (e: unknown) => {
        this.ctx.log.error({ err: (e as Error).message }, 'certificate renewal failed; trying again in a minute');
        this.renewal = setTimeout(() => this.renewAt(notAfter), 60_000);
        this.renewal.unref();
      });
    }, renewDelayMs(notAfter));
    this.renewal.unref();
  }

  /** Graceful shutdown: new work gets 503, sessions in flight get drainSeconds to finish. */
  async stop(): Promise<void> {
    clearTimeout(this.renewal);
    this.podResources?.stop();
    this.ctx.draining = true;
    this.publisher?.stop();
    await this.publisher?.publish(false).catch((e: unknown) => this.ctx.log.warn({ err: (e as Error).message }, 'could not mark the DeviceNode not ready'));
    const deadline = Date.now() + this.ctx.config.drainSeconds * 1000;
    while (this.ctx.sessions.active().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of this.ctx.sessions.active()) s.abort.abort(new Error('agent shutting down'));
    // A commit armed on a verified stream finishes its arcs before the devices close.
    await Promise.allSettled(this.ctx.sessions.all().flatMap((s) => (s.role === 'target' && s.committing ? [s.committing] : [])));
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.ctx.devices.closeAll();
  }
}

async function loadTls(config: AgentConfig): Promise<TlsMaterial> {
  if ('kubernetes' in config.tls) throw new Error('unreachable: cluster certificates are asked for elsewhere');
  const [ca, cert, key] = await Promise.all([readFile(config.tls.ca), readFile(config.tls.cert), readFile(config.tls.key)]);
  return { ca, cert, key };
}

/** Asks the cluster's CSR API for this node's certificate (the Kubernetes client loads only here). */
async function clusterCertificate(config: AgentConfig, log: Logger, reuse = true): Promise<AgentCertificate> {
  if (!('kubernetes' in config.tls)) throw new Error('unreachable: certificate files are configured');
  const k = config.tls.kubernetes;
  // A restart keeps the certificate it had while it is fresh, so an agent comes back even while the
  // controller (the signer) is down; the key stays on the node's disk, readable by the agent alone.
  const saved = join(config.stateDir, 'tls.json');
  const advertised = config.advertise ? new URL(config.advertise).hostname.replace(/^\[|\]$/g, '') : undefined;
  if (reuse) {
    const kept = await readFile(saved, 'utf8').then((t) => JSON.parse(t) as { ca: string; cert: string; key: string; csrName: string }, () => undefined);
    const notAfter = kept && keepable(kept.cert, config.node, advertised);
    if (kept && notAfter) {
      log.info({ csr: kept.csrName, notAfter }, 'kept the agent certificate from the last run');
      return { ...kept, notAfter };
    }
  }
  const [{ Kube }, { requestCertificate }] = await Promise.all([import('../kube/kube.js'), import('./certs.js')]);
  const cert = await requestCertificate(Kube.fromFile(config.kube?.kubeconfig), {
    node: config.node, namespace: k.namespace, caConfigMapName: k.caConfigMapName, signerName: k.signerName,
    expirationSeconds: k.expirationSeconds, hosts: [...new Set([advertised, config.listen.host].filter((h): h is string => Boolean(h)))],
  });
  log.info({ csr: cert.csrName, notAfter: cert.notAfter }, 'got the agent certificate from the cluster');
  await mkdir(config.stateDir, { recursive: true });
  await writeFile(`${saved}.tmp`, JSON.stringify({ ca: cert.ca, cert: cert.cert, key: cert.key, csrName: cert.csrName }), { mode: 0o600 });
  await rename(`${saved}.tmp`, saved);
  return cert;
}

/**
 * Whether a certificate kept from the last run may serve this one (its expiry if so): this node's,
 * before two thirds of its life, and naming the address the agent advertises now. A state directory
 * on the node outlives the pod, and a new pod has a new address that the old certificate does not
 * name (peers would refuse it): then the agent asks for a new one.
 */
export function keepable(certPem: string, node: string, advertised: string | undefined, now = Date.now()): Date | undefined {
  const x = new X509Certificate(certPem);
  const from = Date.parse(x.validFrom);
  const to = Date.parse(x.validTo);
  const names = !advertised || (isIP(advertised) ? x.checkIP(advertised) !== undefined : x.checkHost(advertised) !== undefined);
  return x.subject === `CN=agent:${node}` && names && now < from + ((to - from) * 2) / 3 ? new Date(to) : undefined;
}

/**
 * What the journal says was in flight when the last agent process ended. Data sessions died with it;
 * a commit that was under way is settled by the device's state: STOP or later means RESUMING -> STOP
 * happened, unless the device was reset as this process opened it.
 */
async function reconcile(ctx: AgentContext): Promise<void> {
  for (const e of ctx.journal.all()) {
    const d = ctx.devices.get(e.device);
    if (!e.migration || !d) continue;
    const state = await d.device.getState();
    let step = e.step;
    // A device reset since the journal was written holds nothing of the migration: no step of it
    // stands, a commit least of all (hasCommitted knows no "...>reset" step).
    if (d.resetAtOpen) step = e.step?.endsWith('>reset') ? e.step : `${e.step ?? 'unknown'}>reset`;
    else if (e.role === 'target' && commitFound(e.step, state)) step = state === 'STOP' ? 'commit:done' : `state:${state}`;
    else if (e.step === 'commit:intent') step = 'commit:interrupted';
    else if (e.step?.endsWith(':streaming') || e.step?.endsWith(':waiting') || e.step?.endsWith(':open')) step = `${e.step}>interrupted`;
    // A commit found on the device: it holds the migration's state (the answer recording it was lost).
    const committed = !d.resetAtOpen && e.role === 'target' && commitFound(e.step, state);
    const occupancy = committed && !(e.occupancy?.state === 'Holding' && e.occupancy.migration === e.migration) ? holding(e.migration, undefined) : undefined;
    if (step !== e.step || occupancy) await ctx.journal.step(e.device, { step, ...(occupancy ? { occupancy } : {}) });
    ctx.log.info({ device: e.device, migration: e.migration, role: e.role, step, state }, 'reconciled device from the journal');
  }
}

/** When to ask again: at two thirds of the certificate's remaining life, at least a minute from now. */
export function renewDelayMs(notAfter: Date, now = Date.now()): number {
  return Math.max(60_000, ((notAfter.getTime() - now) * 2) / 3);
}
