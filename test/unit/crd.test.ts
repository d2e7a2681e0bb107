import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { crdFiles } from '../../src/api/crd.js';
import { deviceMigrationSpec } from '../../src/api/types.js';
import { repoRoot } from '../helpers/cli.js';

describe('CRDs generated from the zod declarations', () => {
  it.each(Object.entries(crdFiles()))('crds/%s is current (run `npm run generate` if not)', async (file, text) => {
    expect(await readFile(`${repoRoot}crds/${file}`, 'utf8')).toBe(text);
  });

  it('are structural: no $schema, no additionalProperties beside properties, draft-4 bounds', () => {
    for (const text of Object.values(crdFiles())) {
      const walk = (v: unknown): void => {
        if (Array.isArray(v)) return v.forEach(walk);
        if (typeof v !== 'object' || v === null) return;
        const o = v as Record<string, unknown>;
        expect(o).not.toHaveProperty('$schema');
        if ('properties' in o) expect(o).not.toHaveProperty('additionalProperties');
        if ('exclusiveMinimum' in o) expect(typeof o.exclusiveMinimum).toBe('boolean');
        Object.values(o).forEach(walk);
      };
      walk(parse(text));
    }
  });

  it('DeviceMigration carries its CEL rules and its cluster scope', () => {
    const crd = parse(crdFiles()['devmig.io_devicemigrations.yaml']!) as {
      spec: { scope: string; names: { shortNames: string[]; categories: string[] }; versions: Array<{ schema: { openAPIV3Schema: { properties: { spec: { 'x-kubernetes-validations': Array<{ message: string }> } } } } }> };
    };
    expect(crd.spec.scope).toBe('Cluster');
    expect(crd.spec.names).toMatchObject({ shortNames: ['dmig'], categories: ['devmig'] });
    const rules = crd.spec.versions[0]!.schema.openAPIV3Schema.properties.spec['x-kubernetes-validations'].map((r) => r.message);
    expect(rules.join('\n')).toMatch(/immutable once created, except spec.cancel/);
    expect(rules.join('\n')).toMatch(/must differ from spec.source/);
  });
});

describe('the same declaration validates in the controller', () => {
  it('accepts a minimal spec and fills defaults', () => {
    expect(deviceMigrationSpec.parse({ source: { node: 'a', device: 'sim-0' }, target: { node: 'b' } }))
      .toEqual({ source: { node: 'a', device: 'sim-0' }, target: { node: 'b' }, strategy: 'Auto', cancel: false });
  });

  it.each([
    [{ source: { node: 'a' }, target: { node: 'b' } }, 'source.device'],
    [{ source: { node: 'A', device: 'x' }, target: { node: 'b' } }, 'source.node'],
    [{ source: { node: 'a', device: 'x' }, target: { node: 'b' }, strategy: 'Live' }, 'strategy'],
    [{ source: { node: 'a', device: 'x' }, target: { node: 'b' }, limits: { bandwidth: 'fast' } }, 'limits.bandwidth'],
    [{ source: { node: 'a', device: 'x' }, target: { node: 'b' }, limits: { timeout: '10 minutes' } }, 'limits.timeout'],
    [{ source: { node: 'a', device: 'x' }, target: { node: 'b' }, extra: 1 }, 'extra'],
  ])('refuses %j naming %s', (spec, field) => {
    const r = deviceMigrationSpec.safeParse(spec);
    expect(r.success).toBe(false);
    const paths = r.error!.issues.map((i) => [...i.path, ...('keys' in i ? (i.keys) : [])].join('.'));
    expect(paths.join(' ')).toContain(field);
  });
});
