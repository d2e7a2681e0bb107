/**
 * The API reference (docs/api.md), written from the CRDs that are themselves generated from the zod
 * schemas: one table per kind, a row per field with its type, whether it is required, its limits and
 * its description, then the rules the API server enforces (CEL) with the message a user gets.
 */
import { parse } from 'yaml';
import { crdFiles } from './crd.js';

interface Schema {
  type?: string;
  description?: string;
  properties?: Record<string, Schema>;
  items?: Schema;
  required?: string[];
  enum?: unknown[];
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  default?: unknown;
  format?: string;
  'x-kubernetes-int-or-string'?: boolean;
  'x-kubernetes-preserve-unknown-fields'?: boolean;
  'x-kubernetes-validations'?: Array<{ rule: string; message?: string; messageExpression?: string; fieldPath?: string }>;
}

interface Crd {
  spec: {
    group: string;
    scope: string;
    names: { kind: string; plural: string; shortNames?: string[] };
    versions: Array<{ name: string; schema: { openAPIV3Schema: Schema } }>;
  };
}

export function apiReference(): string {
  const crds = Object.entries(crdFiles()).sort(([a], [b]) => a.localeCompare(b)).map(([, text]) => parse(text) as Crd);
  const out = [
    '# API reference',
    '',
    '<!-- Generated from src/api/types.ts by `npm run generate`. Do not edit. -->',
    '',
    'Every field below is checked by the API server itself (OpenAPI schema and CEL rules in the CRDs),',
    'so a bad object is refused at `kubectl apply` with the field named, before any controller sees it.',
    '',
  ];
  for (const crd of crds) {
    const v = crd.spec.versions[0]!;
    const n = crd.spec.names;
    out.push(`## ${n.kind} (${crd.spec.group}/${v.name})`, '');
    out.push(`${crd.spec.scope === 'Cluster' ? 'Cluster-scoped' : 'Namespaced'}; plural \`${n.plural}\`${n.shortNames?.length ? `, short name${n.shortNames.length > 1 ? 's' : ''} ${n.shortNames.map((s) => `\`${s}\``).join(', ')}` : ''}.`, '');
    const rows: string[][] = [];
    const rules: string[][] = [];
    const root = v.schema.openAPIV3Schema;
    for (const top of ['spec', 'status'] as const) {
      const s = root.properties?.[top];
      if (s) walk(top, s, (root.required ?? []).includes(top), rows, rules);
    }
    out.push('| field | type | required | limits | description |', '|---|---|---|---|---|');
    for (const r of rows) out.push(`| ${r.map(cell).join(' | ')} |`);
    if (rules.length) {
      out.push('', 'Rules (CEL) the API server enforces:', '', '| on | rule | message |', '|---|---|---|');
      for (const r of rules) out.push(`| ${r.map(cell).join(' | ')} |`);
    }
    out.push('');
  }
  return `${out.join('\n').trimEnd()}\n`;
}

function walk(path: string, s: Schema, required: boolean, rows: string[][], rules: string[][]): void {
  rows.push([`\`${path}\``, typeOf(s), required ? 'yes' : '', limits(s), s.description ?? '']);
  for (const r of s['x-kubernetes-validations'] ?? []) {
    rules.push([`\`${path}${r.fieldPath ?? ''}\``, `\`${r.rule}\``, r.message ?? (r.messageExpression ? `(computed) ${r.messageExpression}` : '')]);
  }
  for (const [k, child] of Object.entries(s.properties ?? {})) walk(`${path}.${k}`, child, (s.required ?? []).includes(k), rows, rules);
  if (s.items && (s.items.properties || s.items['x-kubernetes-validations'])) walk(`${path}[]`, s.items, false, rows, rules);
}

function typeOf(s: Schema): string {
  if (s['x-kubernetes-int-or-string']) return 'int or string';
  if (s.type === 'array') return `array of ${s.items ? typeOf(s.items) : 'any'}`;
  return `${s.type ?? 'any'}${s.format ? ` (${s.format})` : ''}`;
}

function limits(s: Schema): string {
  const l: string[] = [];
  if (s.enum) l.push(`one of ${s.enum.map((e) => `\`${String(e)}\``).join(', ')}`);
  if (s.pattern) l.push(`matches \`${s.pattern}\``);
  if (s.minLength !== undefined || s.maxLength !== undefined) l.push(`length ${s.minLength ?? 0}..${s.maxLength ?? '∞'}`);
  if (s.minimum !== undefined || s.maximum !== undefined) l.push(`${s.minimum ?? '-∞'}..${s.maximum ?? '∞'}`);
  if (s.minItems !== undefined || s.maxItems !== undefined) l.push(`${s.minItems ?? 0}..${s.maxItems ?? '∞'} items`);
  if (s.default !== undefined) l.push(`default \`${JSON.stringify(s.default)}\``);
  return l.join('; ');
}

/** Markdown table cells: one line, pipes escaped. */
function cell(t: string): string {
  return t.replace(/\n+/g, ' ').replace(/\|/g, '\\|');
}
