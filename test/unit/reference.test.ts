/** docs/api.md is generated from the schemas and must be current; it names every field and rule. */
import { readFile } from 'node:fs/promises';
import { parse } from 'yaml';
import { crdFiles } from '../../src/api/crd.js';
import { apiReference } from '../../src/api/reference.js';

it('docs/api.md is what `npm run generate` writes', async () => {
  expect(await readFile(new URL('../../docs/api.md', import.meta.url), 'utf8')).toBe(apiReference());
});

it('has a row for every spec field and every CEL rule of every CRD', () => {
  const doc = apiReference();
  for (const text of Object.values(crdFiles())) {
    const crd = parse(text) as { spec: { names: { kind: string }; versions: Array<{ schema: { openAPIV3Schema: unknown } }> } };
    expect(doc).toContain(`## ${crd.spec.names.kind} `);
    const seen: string[] = [];
    const walk = (path: string, s: { properties?: Record<string, unknown>; 'x-kubernetes-validations'?: Array<{ rule: string }> }) => {
      seen.push(path);
      for (const r of s['x-kubernetes-validations'] ?? []) expect(doc).toContain(r.rule.replace(/\n+/g, ' ').replace(/\|/g, '\\|'));
      for (const [k, v] of Object.entries(s.properties ?? {})) walk(`${path}.${k}`, v as typeof s);
    };
    const root = crd.spec.versions[0]!.schema.openAPIV3Schema as { properties: { spec?: object } };
    if (root.properties.spec) walk('spec', root.properties.spec);
    for (const p of seen) expect(doc).toContain(`| \`${p}\` |`);
  }
});
