/** Prometheus metrics (prom-client) with conventional names; times in seconds. */
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { DeviceMigration } from '../kube/kube.js';

export class Metrics {
  readonly registry = new Registry();
  readonly migrations = new Counter({ name: 'devmig_migrations_total', help: 'Migrations finished, by result', labelNames: ['result'], registers: [this.registry] });
  readonly duration = new Histogram({ name: 'devmig_migration_duration_seconds', help: 'From validation to a final state', buckets: [0.1, 0.5, 1, 5, 15, 60, 300, 1800], registers: [this.registry] });
  readonly downtime = new Histogram({ name: 'devmig_migration_downtime_seconds', help: 'From the source stopping to the target running', buckets: [0.01, 0.05, 0.1, 0.3, 1, 3, 10, 60], registers: [this.registry] });
  readonly bytes = new Counter({ name: 'devmig_transfer_bytes_total', help: 'Device state bytes moved by finished migrations', registers: [this.registry] });
  readonly failedArcs = new Counter({ name: 'devmig_failed_arcs_total', help: 'FSM arcs that failed, by device role', labelNames: ['device'], registers: [this.registry] });
  readonly reconciles = new Counter({ name: 'devmig_reconcile_total', help: 'Reconcile passes', registers: [this.registry] });
  readonly reconcileErrors = new Counter({ name: 'devmig_reconcile_errors_total', help: 'Reconcile passes that failed', registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'devmig_controller_' });
  }

  finished(m: DeviceMigration, result: string): void {
    this.migrations.inc({ result });
    const s = m.status;
    if (s?.startedAt) this.duration.observe((Date.now() - Date.parse(s.startedAt)) / 1000);
    if (s?.downtimeMs !== undefined) this.downtime.observe(s.downtimeMs / 1000);
    if (s?.transfer?.bytes) this.bytes.inc(s.transfer.bytes);
  }
}
