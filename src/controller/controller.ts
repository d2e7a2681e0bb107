/**
 * The controller: wiring only. Leader election, a watch of DeviceMigrations that restarts on error
 * and relists periodically, a key-based work queue, the reconciler, and /metrics.
 */
import * as k8s from '@kubernetes/client-node';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { GROUP, VERSION } from '../api/names.js';
import type { TlsMaterial } from '../relay/h2.js';
import type { DeviceMigration, Kube } from '../kube/kube.js';
import { lead, type LeaderOptions } from './leader.js';
import { Metrics } from './metrics.js';
import { WorkQueue } from './queue.js';
import { Reconciler } from './reconcile.js';
import { EVACUATION_LABEL, Evacuator } from './evacuation.js';
import { GROUP_LABEL, GroupReconciler } from './group.js';
import { ReleaseReconciler } from './release.js';

export interface ControllerOptions {
  readonly kube: Kube;
  /** Where agents run as pods: their pod IPs count as their node's endpoints. */
  readonly agentPods?: { namespace: string; serviceAccount: string };
  readonly tls: TlsMaterial;
  readonly ticketSecret: Buffer;
  readonly log: Logger;
  readonly workers: number;
  readonly metricsPort?: number;
  readonly metricsHost?: string;
  readonly leader?: LeaderOptions;
  readonly resyncMs?: number;
  /** Migrations of all DeviceEvacuations running at once (default 8). */
  readonly evacuationMaxParallel?: number;
}

export class Controller {
  private readonly informers: Array<k8s.Informer<k8s.KubernetesObject>> = [];
  /** The DeviceMigrations as the watch last delivered them. */
  private migrations: k8s.Informer<k8s.KubernetesObject> & k8s.ObjectCache<k8s.KubernetesObject> | undefined;
  private stopLease: (() => void) | undefined;
  private resync: NodeJS.Timeout | undefined;
  private server: Server | undefined;
  private stopped = false;
  readonly metrics = new Metrics();
  private readonly queue: WorkQueue;
  private readonly reconciler: Reconciler;
  private readonly evacuations: WorkQueue;
  private readonly groups: WorkQueue;
  private readonly releases: WorkQueue;

  constructor(private readonly o: ControllerOptions) {
    this.reconciler = new Reconciler({ kube: o.kube, tls: o.tls, ticketSecret: o.ticketSecret, log: o.log, metrics: this.metrics,
      ...(o.agentPods ? { agentPods: o.agentPods } : {}),
      watched: (name) => this.migrations?.get(name) as DeviceMigration | undefined });
    this.queue = this.queueOf('migration', async (name) => {
      this.metrics.reconciles.inc();
      return this.reconciler.reconcile(name);
    }, o.workers, 200);
    const evacuator = new Evacuator({ kube: o.kube, log: o.log, maxParallelTotal: o.evacuationMaxParallel ?? 8 });
    this.evacuations = this.queueOf('evacuation', (name) => evacuator.reconcile(name), 1, 500);
    const grouper = new GroupReconciler({ kube: o.kube, log: o.log });
    this.groups = this.queueOf('group', (name) => grouper.reconcile(name), 2, 500);
    const releaser = new ReleaseReconciler({ kube: o.kube, log: o.log, agent: (node, n) => this.reconciler.agentFor(node, n) });
    this.releases = this.queueOf('release', (name) => releaser.reconcile(name), 1, 500);
  }

  /** A work queue whose failures count as reconcile errors and are logged with the object's kind. */
  private queueOf(kind: string, reconcile: (name: string) => Promise<{ requeueAfterMs?: number }>, workers: number, baseDelayMs: number): WorkQueue {
    return new WorkQueue(reconcile, { workers, baseDelayMs, maxDelayMs: 30_000 }, (name, e) => {
      this.metrics.reconcileErrors.inc();
      this.o.log.warn({ [kind]: name, err: (e as Error).message }, `${kind} reconcile failed; retrying with backoff`);
    });
  }

  get metricsPort(): number | undefined {
    return (this.server?.address() as AddressInfo | null)?.port;
  }

  async start(): Promise<void> {
    await this.serveMetrics();
    if (this.o.leader) {
      this.stopLease = await lead(this.o.kube, this.o.leader, this.o.log, () => {
        this.o.log.error('lost the leader lease; exiting so that another replica leads');
        process.exit(1);
      });
    }
    await this.watch();
    this.resync = setInterval(() => { void this.relist(); }, this.o.resyncMs ?? 30_000);
    this.resync.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.resync);
    this.stopLease?.();
    for (const i of this.informers) await i.stop();
    this.queue.stop();
    this.evacuations.stop();
    this.groups.stop();
    this.releases.stop();
    this.reconciler.close();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private async watch(): Promise<void> {
    // A migration's change also wakes the evacuation it belongs to (its status aggregates them).
    // A version the reconciler wrote itself wakes it for nothing: the pass that wrote it goes on.
    await this.watchKind('devicemigrations', (m, type) => {
      if (type === 'delete') this.reconciler.forget(m.metadata!.name!);
      if (type === 'delete' || !this.reconciler.isOwnWrite(m.metadata!.name!, m.metadata?.resourceVersion)) this.queue.add(m.metadata!.name!);
      const evac = m.metadata?.labels?.[EVACUATION_LABEL];
      if (evac) this.evacuations.add(evac);
      const group = m.metadata?.labels?.[GROUP_LABEL];
      if (group) this.groups.add(group);
    });
    await this.watchKind('deviceevacuations', (e) => this.evacuations.add(e.metadata!.name!));
    await this.watchKind('devicemigrationgroups', (g) => this.groups.add(g.metadata!.name!));
    await this.watchKind('devicereleases', (r, type) => { if (type !== 'delete') this.releases.add(r.metadata!.name!); });
  }

  private async watchKind(plural: string, enqueue: (o: k8s.KubernetesObject, type: 'add' | 'update' | 'delete') => void): Promise<void> {
    const path = `/apis/${GROUP}/${VERSION}/${plural}`;
    const list = async () => (await this.o.kube.custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural })) as k8s.KubernetesListObject<k8s.KubernetesObject>;
    const inf = k8s.makeInformer<k8s.KubernetesObject>(this.o.kube.config, path, list);
    for (const type of ['add', 'update', 'delete'] as const) inf.on(type, (o: k8s.KubernetesObject) => { if (o.metadata?.name) enqueue(o, type); });
    // The informer stops on errors other than 410: start it again after a pause, and relist.
    inf.on('error', (e: unknown) => {
      if (this.stopped) return;
      this.o.log.warn({ err: String(e), plural }, 'watch failed; restarting in 2s');
      setTimeout(() => { if (!this.stopped) void inf.start().catch(() => undefined); }, 2000).unref();
    });
    this.informers.push(inf);
    if (plural === 'devicemigrations') this.migrations = inf;
    await inf.start();
  }

  private async relist(): Promise<void> {
    try {
      for (const m of await this.o.kube.listMigrations()) this.queue.add(m.metadata.name);
    } catch (e) {
      this.o.log.warn({ err: (e as Error).message }, 'relist failed');
    }
  }

  private async serveMetrics(): Promise<void> {
    if (this.o.metricsPort === undefined) return;
    this.server = createServer((req, res) => {
      if (req.url === '/metrics') {
        this.metrics.registry.metrics().then((text) => {
          res.writeHead(200, { 'content-type': this.metrics.registry.contentType });
          res.end(text);
        }, (e: unknown) => { res.writeHead(500); res.end(String(e)); });
        return;
      }
      res.writeHead(req.url === '/healthz' || req.url === '/readyz' ? 200 : 404);
      res.end();
    });
    await new Promise<void>((r) => this.server!.listen(this.o.metricsPort, this.o.metricsHost ?? '0.0.0.0', () => r()));
  }
}
