/**
 * CRDs generated from the zod declarations (src/api/types.ts). JSON Schema from zod is turned into a
 * Kubernetes structural schema: no $schema, no additionalProperties beside properties (the API server
 * prunes and, with strict field validation, refuses unknown fields), draft-4 exclusive bounds. The
 * API server's own checks that zod cannot say are CEL rules (x-kubernetes-validations).
 */
import { stringify } from 'yaml';
import { z } from 'zod';
import { GROUP, VERSION } from './names.js';
import {
  deviceMigrationSpec, deviceMigrationStatus, deviceNodeSpec, deviceNodeStatus, deviceEvacuationSpec, deviceEvacuationStatus,
  deviceMigrationGroupSpec, deviceMigrationGroupStatus, deviceReleaseSpec, deviceReleaseStatus,
} from './types.js';

type Schema = Record<string, unknown>;

export function structural(input: unknown): Schema {
  if (Array.isArray(input)) return input.map(structural) as unknown as Schema;
  if (typeof input !== 'object' || input === null) return input as Schema;
  const out: Schema = {};
  for (const [k, v] of Object.entries(input as Schema)) {
    if (k === '$schema' || k === 'propertyNames') continue;
    // false (a strict object) is the structural default; a schema (a record, e.g. matchLabels) must
    // stay, or the API server prunes every key of it.
    if (k === 'additionalProperties') {
      if (typeof v === 'object' && v !== null) out[k] = structural(v);
      continue;
    }
    if (k === 'maximum' && v === Number.MAX_SAFE_INTEGER) continue;
    if (k === 'minimum' && v === Number.MIN_SAFE_INTEGER) continue;
    if (k === 'exclusiveMinimum' && typeof v === 'number') {
      out.minimum = v;
      out.exclusiveMinimum = true;
      continue;
    }
    out[k] = structural(v);
  }
  return out;
}

const toSchema = (s: z.ZodType): Schema => structural(z.toJSONSchema(s, { io: 'input', unrepresentable: 'throw' }));

interface Kind {
  readonly kind: string;
  readonly plural: string;
  readonly singular: string;
  readonly shortNames: string[];
  readonly spec: z.ZodType;
  readonly status: z.ZodType;
  readonly specRules?: Array<{ rule: string; message: string; reason?: string; fieldPath?: string }>;
  readonly fieldRules?: Record<string, Array<{ rule: string; message: string }>>;
  readonly columns: Array<{ name: string; type: string; jsonPath: string; description?: string; priority?: number }>;
}

/** spec.limits and spec.precopy mean the same in every kind that has them: positive quantities and durations. */
const LIMIT_RULES: NonNullable<Kind['fieldRules']> = {
  'limits.bandwidth': [{ rule: "quantity(self).isGreaterThan(quantity('0'))", message: 'spec.limits.bandwidth must be positive, e.g. 500Mi' }],
  'limits.timeout': [{ rule: "duration(self) > duration('0s')", message: 'spec.limits.timeout must be positive, e.g. 10m' }],
  'limits.maxDowntime': [{ rule: "duration(self) > duration('0s')", message: 'spec.limits.maxDowntime must be positive, e.g. 300ms' }],
};
const PRECOPY_RULES: NonNullable<Kind['fieldRules']> = {
  'precopy.maxDuration': [{ rule: "duration(self) > duration('0s')", message: 'spec.precopy.maxDuration must be positive, e.g. 5m' }],
};

const migration: Kind = {
  kind: 'DeviceMigration',
  plural: 'devicemigrations',
  singular: 'devicemigration',
  shortNames: ['dmig'],
  spec: deviceMigrationSpec,
  status: deviceMigrationStatus,
  specRules: [
    {
      rule: 'self.source == oldSelf.source && self.target == oldSelf.target && self.strategy == oldSelf.strategy && '
        + 'has(self.limits) == has(oldSelf.limits) && (!has(self.limits) || self.limits == oldSelf.limits) && '
        + 'has(self.precopy) == has(oldSelf.precopy) && (!has(self.precopy) || self.precopy == oldSelf.precopy) && '
        + 'has(self.group) == has(oldSelf.group) && (!has(self.group) || self.group == oldSelf.group)',
      message: 'spec is immutable once created, except spec.cancel: delete the DeviceMigration and create a new one',
    },
    { rule: '!oldSelf.cancel || self.cancel', message: 'spec.cancel cannot be set back to false once true' },
    {
      rule: 'self.source.node != self.target.node || (has(self.target.device) && self.target.device != self.source.device)',
      message: 'spec.target must differ from spec.source: another node, or another device on the same node',
      fieldPath: '.target',
    },
  ],
  fieldRules: { ...LIMIT_RULES, ...PRECOPY_RULES },
  columns: [
    { name: 'Source', type: 'string', jsonPath: '.spec.source.node' },
    { name: 'Target', type: 'string', jsonPath: '.spec.target.node' },
    { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
    { name: 'Progress', type: 'string', jsonPath: '.status.progress' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
    { name: 'Device', type: 'string', jsonPath: '.spec.source.device', priority: 1 },
    { name: 'Downtime', type: 'integer', jsonPath: '.status.downtimeMs', description: 'milliseconds', priority: 1 },
  ],
};

const node: Kind = {
  kind: 'DeviceNode',
  plural: 'devicenodes',
  singular: 'devicenode',
  shortNames: ['dnode'],
  spec: deviceNodeSpec,
  status: deviceNodeStatus,
  columns: [
    { name: 'Endpoint', type: 'string', jsonPath: '.spec.endpoint' },
    { name: 'Ready', type: 'boolean', jsonPath: '.status.ready' },
    { name: 'Heartbeat', type: 'date', jsonPath: '.status.heartbeat' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
  ],
};

const evacuation: Kind = {
  kind: 'DeviceEvacuation',
  plural: 'deviceevacuations',
  singular: 'deviceevacuation',
  shortNames: ['devac'],
  spec: deviceEvacuationSpec,
  status: deviceEvacuationStatus,
  specRules: [
    { rule: 'self.node == oldSelf.node', message: 'spec.node is immutable: create another DeviceEvacuation for another node', fieldPath: '.node' },
    { rule: '!oldSelf.cancel || self.cancel', message: 'spec.cancel cannot be set back to false once true' },
  ],
  fieldRules: LIMIT_RULES,
  columns: [
    { name: 'Node', type: 'string', jsonPath: '.spec.node' },
    { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
    { name: 'Total', type: 'integer', jsonPath: '.status.counts.total' },
    { name: 'Running', type: 'integer', jsonPath: '.status.counts.running' },
    { name: 'Succeeded', type: 'integer', jsonPath: '.status.counts.succeeded' },
    { name: 'Failed', type: 'integer', jsonPath: '.status.counts.failed' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
  ],
};

const group: Kind = {
  kind: 'DeviceMigrationGroup',
  plural: 'devicemigrationgroups',
  singular: 'devicemigrationgroup',
  shortNames: ['dmgroup'],
  spec: deviceMigrationGroupSpec,
  status: deviceMigrationGroupStatus,
  specRules: [
    {
      rule: 'self.members == oldSelf.members && self.strategy == oldSelf.strategy && '
        + 'has(self.limits) == has(oldSelf.limits) && (!has(self.limits) || self.limits == oldSelf.limits) && '
        + 'has(self.precopy) == has(oldSelf.precopy) && (!has(self.precopy) || self.precopy == oldSelf.precopy)',
      message: 'spec is immutable once created, except spec.cancel: delete the DeviceMigrationGroup and create a new one',
    },
    { rule: '!oldSelf.cancel || self.cancel', message: 'spec.cancel cannot be set back to false once true' },
    {
      rule: 'self.members.all(m, m.source.node != m.target.node || (has(m.target.device) && m.target.device != m.source.device))',
      message: 'spec.members: each target must differ from its source: another node, or another device on the same node',
      fieldPath: '.members',
    },
    {
      rule: 'self.members.all(a, self.members.exists_one(b, b.source == a.source))',
      message: 'spec.members: a source device may appear once',
      fieldPath: '.members',
    },
  ],
  fieldRules: { ...LIMIT_RULES, ...PRECOPY_RULES },
  columns: [
    { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
    { name: 'Downtime', type: 'integer', jsonPath: '.status.downtimeMs', description: 'milliseconds' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
  ],
};

const release: Kind = {
  kind: 'DeviceRelease',
  plural: 'devicereleases',
  singular: 'devicerelease',
  shortNames: ['drel'],
  spec: deviceReleaseSpec,
  status: deviceReleaseStatus,
  specRules: [
    { rule: 'self == oldSelf', message: 'spec is immutable: a DeviceRelease acts once; create another one to release the device again' },
  ],
  columns: [
    { name: 'Node', type: 'string', jsonPath: '.spec.node' },
    { name: 'Device', type: 'string', jsonPath: '.spec.device' },
    { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
    { name: 'By', type: 'string', jsonPath: '.status.releasedBy' },
    { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
  ],
};

export const KINDS = [migration, node, evacuation, group, release];

function withFieldRules(spec: Schema, rules: Kind['fieldRules']): Schema {
  for (const [path, r] of Object.entries(rules ?? {})) {
    let at = spec;
    for (const part of path.split('.')) at = (at.properties as Record<string, Schema>)[part]!;
    at['x-kubernetes-validations'] = r;
  }
  return spec;
}

export function crdOf(k: Kind): Schema {
  const spec = withFieldRules(toSchema(k.spec), k.fieldRules);
  if (k.specRules) spec['x-kubernetes-validations'] = k.specRules;
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${k.plural}.${GROUP}` },
    spec: {
      group: GROUP,
      names: { kind: k.kind, listKind: `${k.kind}List`, plural: k.plural, singular: k.singular, shortNames: k.shortNames, categories: ['devmig'] },
      scope: 'Cluster',
      versions: [{
        name: VERSION,
        served: true,
        storage: true,
        subresources: { status: {} },
        additionalPrinterColumns: k.columns,
        schema: {
          openAPIV3Schema: {
            type: 'object',
            required: ['spec'],
            properties: {
              apiVersion: { type: 'string' },
              kind: { type: 'string' },
              metadata: { type: 'object' },
              spec,
              status: toSchema(k.status),
            },
          },
        },
      }],
    },
  };
}

export function crdFiles(): Record<string, string> {
  const header = '# Generated from src/api/types.ts by `npm run generate`. Do not edit.\n';
  return Object.fromEntries(KINDS.map((k) => [`${GROUP}_${k.plural}.yaml`, header + stringify(crdOf(k), { lineWidth: 0 })]));
}
