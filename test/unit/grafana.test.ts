/** The Grafana dashboard (deploy/grafana/devmig.json) queries only metrics the controller exports. */
import { readFile } from 'node:fs/promises';
import { Metrics } from '../../src/controller/metrics.js';

interface Panel { id: number; title: string; gridPos: { x: number; y: number; w: number; h: number }; targets: Array<{ expr: string }> }

it('every metric a panel queries exists in the controller\'s registry, with the labels it uses', async () => {
  const dash = JSON.parse(await readFile(new URL('../../deploy/grafana/devmig.json', import.meta.url), 'utf8')) as { uid: string; panels: Panel[] };
  const registry = new Metrics().registry;
  const metrics = await registry.getMetricsAsJSON();
  const labelsOf = (name: string) => (registry.getSingleMetric(name) as unknown as { labelNames?: string[] } | undefined)?.labelNames ?? [];
  const known = new Map(metrics.map((m) => [m.name, m]));
  const used = new Set<string>();
  for (const p of dash.panels) {
    expect(p.targets.length).toBeGreaterThan(0);
    for (const t of p.targets) {
      for (const [name] of t.expr.matchAll(/devmig_[a-z0-9_]+/g)) {
        const base = known.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
        expect({ panel: p.title, metric: name, known: known.has(base) }).toEqual({ panel: p.title, metric: name, known: true });
        used.add(base);
      }
      // A label a panel groups or filters by must be one the metric has (le: a histogram's own).
      const names = [...t.expr.matchAll(/devmig_[a-z0-9_]+/g)].map(([n]) => n.replace(/_(bucket|sum|count)$/, ''));
      const labels = [...t.expr.matchAll(/by \(([a-z_]+)\)|\{([a-z_]+)[!=]/g)].map((x) => x[1] ?? x[2]!).filter((l) => l !== 'le');
      for (const label of labels) expect({ panel: p.title, label, ok: names.some((n) => labelsOf(n).includes(label)) }).toEqual({ panel: p.title, label, ok: true });
    }
  }
  // Every devmig metric of our own (not the process defaults) is on the dashboard.
  for (const m of metrics.filter((x) => !x.name.startsWith('devmig_controller_'))) expect([m.name, used.has(m.name)]).toEqual([m.name, true]);
  const ids = dash.panels.map((p) => p.id);
  expect(new Set(ids).size).toBe(ids.length);
  for (const p of dash.panels) expect(p.gridPos.x + p.gridPos.w).toBeLessThanOrEqual(24);
});
