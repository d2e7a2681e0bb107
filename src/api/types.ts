/**
 * devmig's API, one zod declaration per kind. Each gives the TypeScript type, the runtime validation
 * the controller applies, and (src/api/crd.ts) the CRD's openAPIV3Schema, so the three never drift.
 */
import { z } from 'zod';
import { STATE_NAMES } from '../vfio/uapi.js';

export const name = z.string().min(1).max(253).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/)
  .describe('A Kubernetes object name: lowercase letters, digits, "-" and ".".');
const quantityPattern = '^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$';
const durationPattern = '^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$';
const quantity = z.string().max(64).regex(new RegExp(quantityPattern)).describe('A Kubernetes quantity, e.g. 500Mi.');
const duration = z.string().max(64).regex(new RegExp(durationPattern)).describe('A Go duration, e.g. 300ms or 10m.');
const stateName = z.enum(STATE_NAMES as unknown as [string, ...string[]]);
const time = z.string().describe('RFC 3339 time.');

export const strategies = ['StopCopy', 'PreCopy', 'Auto'] as const;

export const deviceMigrationSpec = z.strictObject({
  source: z.strictObject({ node: name.describe('The node the device is on now.'), device: name.describe('The device on that node.') }),
  target: z.strictObject({
    node: name.describe('The node to move the device state to.'),
    device: name.optional().describe('The device there; unset: the controller picks a free compatible one.'),
  }),
  strategy: z.enum(strategies).default('Auto').describe('StopCopy, PreCopy, or Auto (PreCopy when both devices support it).'),
  limits: z.strictObject({
    bandwidth: quantity.optional().describe('Bytes per second for the stream, e.g. 500Mi.'),
    timeout: duration.optional().describe('How long the whole migration may take before it is rolled back.'),
    maxDowntime: duration.optional().describe('PreCopy: switch to STOP_COPY once the rest fits in this much downtime.'),
  }).optional(),
  precopy: z.strictObject({
    maxDuration: duration.default('5m').describe('How long PRE_COPY may stream before the convergence limit applies.'),
    onNoConvergence: z.enum(['StopCopy', 'Fail']).default('StopCopy')
      .describe('At the limit: StopCopy stops the device anyway (longer downtime); Fail rolls back, the source keeps running.'),
  }).optional().describe('PreCopy: when to give up waiting for the remaining state to fit in maxDowntime.'),
  cancel: z.boolean().default(false).describe('Set to true to roll the migration back (the only field that may change).'),
  group: name.optional().describe('Set by the controller on the members of a DeviceMigrationGroup: the group they stop, commit and resume with.'),
});

export const phases = ['Pending', 'Preparing', 'PreCopy', 'StopCopy', 'Resuming', 'Succeeded', 'Failed', 'RolledBack', 'Cancelled'] as const;
/** The phases a DeviceMigration ends in; after them nothing moves. */
export const FINAL_PHASES: ReadonlySet<string> = new Set(['Succeeded', 'Failed', 'RolledBack', 'Cancelled']);
export const isFinalPhase = (phase: string | undefined): boolean => FINAL_PHASES.has(phase ?? '');

export const condition = z.strictObject({
  type: z.string(),
  status: z.enum(['True', 'False', 'Unknown']),
  reason: z.string(),
  message: z.string(),
  lastTransitionTime: time,
  observedGeneration: z.number().int().optional(),
});

export const arcRecord = z.strictObject({
  device: z.enum(['source', 'target']),
  from: stateName,
  to: stateName,
  startedAt: time,
  durationMs: z.number(),
  result: z.enum(['Succeeded', 'Failed']),
  errno: z.string().optional(),
  message: z.string().optional(),
});

export const deviceMigrationStatus = z.strictObject({
  observedGeneration: z.number().int().optional(),
  phase: z.enum(phases).optional(),
  conditions: z.array(condition).optional(),
  arcs: z.array(arcRecord).optional(),
  transfer: z.strictObject({
    bytes: z.number().int(),
    expectedBytes: z.number().int().optional().describe('Bytes sent plus what the source still has to send (it grows while PRE_COPY runs).'),
    rate: z.number().int().optional().describe('Measured bytes per second of the stream.'),
    observedAt: time.optional(),
    digest: z.string().optional(),
  }).optional(),
  progress: z.string().optional().describe('Percent of the expected bytes moved; it never goes down.'),
  convergence: z.strictObject({
    reason: z.enum(['Converged', 'LimitReached']),
    message: z.string(),
    estimatedDowntimeMs: z.number().int().optional(),
  }).optional().describe('PreCopy: why it switched to STOP_COPY.'),
  precopyStartedAt: time.optional(),
  targetDevice: name.optional().describe('The target device, chosen or given.'),
  /** The write-ahead log: the step the controller has decided on, recorded before it acts. */
  step: z.string().optional(),
  precopy: z.boolean().optional().describe('Whether the migration streams from PRE_COPY (the strategy, resolved).'),
  startedAt: time.optional(),
  stopCopyAt: time.optional().describe('When the source stopped: downtime runs from here to the target RUNNING.'),
  downtimeMs: z.number().optional(),
  committedAt: time.optional(),
  commitOnVerify: z.boolean().optional().describe('The target commits (RESUMING -> STOP) and runs as soon as it has verified the stream, without waiting for the controller: the intent, recorded before the target is prepared. Not for group members, which commit together.'),
  quiescedAt: time.optional().describe('A group member: when its source reached RUNNING_P2P or PRE_COPY_P2P (or, without P2P, was ready to stop).'),
  targetReadyAt: time.optional().describe('A group member: when its committed target reached RUNNING_P2P (or, without P2P, was ready to run).'),
  failure: z.strictObject({ reason: z.string(), message: z.string() }).optional(),
});

export const deviceNodeSpec = z.strictObject({
  node: name,
  endpoint: z.string().describe('The agent\'s HTTPS endpoint.'),
  identity: z.string().describe('The identity the agent proves: agent:<node>.'),
});

/** What a device holds, as its agent records it (DESIGN.md invariant 7). Only a Free device receives. */
export const occupancyStates = ['Free', 'Holding', 'Allocated'] as const;
/** How the agent's record came to be. */
export const occupancyReasons = ['Spare', 'FoundInUse', 'Migrated', 'SourceReleased', 'Released', 'RolledBack'] as const;

export const podAllocation = z.strictObject({
  namespace: z.string(),
  pod: z.string(),
  container: z.string().optional(),
  resource: z.string().describe('The resource name the kubelet allocated it under (device plugin), or the DRA driver.'),
});

export const occupancy = z.strictObject({
  state: z.enum(occupancyStates).describe('Free: it may receive a migration. Holding: it holds a workload\'s state. Allocated: the kubelet gave it to a pod.'),
  reason: z.enum(occupancyReasons).describe('Spare: declared spare in the agent\'s config. FoundInUse: found at the agent\'s first start and not declared spare. '
    + 'Migrated: a migration put a workload\'s state here. SourceReleased: it was a migration\'s source and was reset once the target ran. '
    + 'Released: a DeviceRelease reset it. RolledBack: it was a target whose migration rolled back; reset.'),
  since: time,
  migration: name.optional().describe('Migrated: the migration whose state it holds; SourceReleased, RolledBack: the migration it served.'),
  digest: z.string().optional().describe('Migrated: the digest of the stream it committed.'),
  release: name.optional().describe('Released: the DeviceRelease that reset it.'),
  releasedBy: z.string().optional().describe('Released: who asked for it.'),
  pods: z.array(podAllocation).optional().describe('Allocated: the pods the kubelet allocated it to (PodResources API).'),
});

export const deviceNodeStatus = z.strictObject({
  devices: z.array(z.strictObject({
    name,
    kind: z.enum(['simulated', 'kernel']),
    flags: z.array(z.enum(['STOP_COPY', 'P2P', 'PRE_COPY'])),
    state: stateName,
    migration: name.optional().describe('The migration in flight on the device, if any.'),
    role: z.enum(['source', 'target']).optional(),
    occupancy: occupancy.optional().describe('What the device holds; unset (an older agent): not known to be free.'),
  })).optional(),
  heartbeat: time.optional(),
  ready: z.boolean().optional(),
});

export const deviceReleaseSpec = z.strictObject({
  node: name.describe('The node of the device.'),
  device: name.describe('The device to release: its agent resets it, and it is free to receive another workload\'s state.'),
  requestedBy: z.string().min(1).max(256).optional()
    .describe('Who asks, recorded in status: kubectl devmig release sets it. The admission policy accepts only the name of the user who creates the object.'),
});

export const releasePhases = ['Pending', 'Releasing', 'Released', 'Failed'] as const;

export const deviceReleaseStatus = z.strictObject({
  observedGeneration: z.number().int().optional(),
  phase: z.enum(releasePhases).optional(),
  conditions: z.array(condition).optional(),
  previous: occupancy.optional().describe('What the device held before the release, as its agent recorded it.'),
  releasedAt: time.optional(),
  releasedBy: z.string().optional().describe('spec.requestedBy (checked at admission), else the field manager that created the object.'),
  failure: z.strictObject({ reason: z.string(), message: z.string() }).optional(),
});

const labelSelector = z.strictObject({
  matchLabels: z.record(z.string(), z.string()).optional(),
  matchExpressions: z.array(z.strictObject({
    key: z.string().min(1),
    operator: z.enum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
    values: z.array(z.string()).optional(),
  })).optional(),
}).describe('A Kubernetes label selector over Node objects.');

export const deviceEvacuationSpec = z.strictObject({
  node: name.describe('The node to move every in-use migratable device off.'),
  targetNodeSelector: labelSelector.optional().describe('Where the devices may go; unset: any other node with a ready agent.'),
  maxParallel: z.number().int().min(1).max(64).default(2).describe('Migrations of this evacuation running at once.'),
  strategy: z.enum(strategies).default('Auto').describe('The strategy of each DeviceMigration.'),
  limits: deviceMigrationSpec.shape.limits.describe('The limits of each DeviceMigration.'),
  cancel: z.boolean().default(false).describe('Set to true to roll back running migrations and start no new ones.'),
});

export const evacuationPhases = ['Pending', 'Running', 'Succeeded', 'PartiallyFailed', 'Failed', 'Cancelled'] as const;

export const deviceEvacuationStatus = z.strictObject({
  observedGeneration: z.number().int().optional(),
  phase: z.enum(evacuationPhases).optional(),
  conditions: z.array(condition).optional(),
  counts: z.strictObject({
    total: z.number().int(), waiting: z.number().int(), running: z.number().int(),
    succeeded: z.number().int(), failed: z.number().int(),
  }).optional(),
  devices: z.array(z.strictObject({
    device: name,
    migration: name.optional(),
    targetNode: name.optional(),
    targetDevice: name.optional(),
    phase: z.string(),
    reason: z.string().optional(),
    message: z.string().optional(),
  })).optional(),
  startedAt: time.optional(),
  finishedAt: time.optional(),
});

const member = z.strictObject({
  source: deviceMigrationSpec.shape.source,
  target: deviceMigrationSpec.shape.target,
});

export const deviceMigrationGroupSpec = z.strictObject({
  members: z.array(member).min(1).max(32).describe('The devices that move together: each a source and a target, on any nodes.'),
  strategy: deviceMigrationSpec.shape.strategy,
  limits: deviceMigrationSpec.shape.limits.describe('The limits of each member migration.'),
  precopy: deviceMigrationSpec.shape.precopy,
  cancel: z.boolean().default(false).describe('Set to true to roll the whole group back (the only field that may change).'),
});

export const groupPhases = ['Pending', 'Running', 'Succeeded', 'RolledBack', 'Failed', 'Cancelled'] as const;

export const deviceMigrationGroupStatus = z.strictObject({
  observedGeneration: z.number().int().optional(),
  phase: z.enum(groupPhases).optional(),
  conditions: z.array(condition).optional(),
  members: z.array(z.strictObject({
    migration: name,
    source: z.string().describe('node/device'),
    target: z.string().describe('node/device (the device once chosen)'),
    phase: z.string(),
    reason: z.string().optional(),
    message: z.string().optional(),
  })).optional(),
  downtimeMs: z.number().optional().describe('From the first source stopping to the last target running.'),
  startedAt: time.optional(),
  finishedAt: time.optional(),
});

export type DeviceReleaseSpec = z.infer<typeof deviceReleaseSpec>;
export type DeviceReleaseStatus = z.infer<typeof deviceReleaseStatus>;
export type Occupancy = z.infer<typeof occupancy>;
export type PodAllocation = z.infer<typeof podAllocation>;
export type DeviceMigrationGroupSpec = z.infer<typeof deviceMigrationGroupSpec>;
export type DeviceMigrationGroupStatus = z.infer<typeof deviceMigrationGroupStatus>;
export type DeviceEvacuationSpec = z.infer<typeof deviceEvacuationSpec>;
export type DeviceEvacuationStatus = z.infer<typeof deviceEvacuationStatus>;
export type DeviceMigrationSpec = z.infer<typeof deviceMigrationSpec>;
export type DeviceMigrationStatus = z.infer<typeof deviceMigrationStatus>;
export type DeviceNodeSpec = z.infer<typeof deviceNodeSpec>;
export type DeviceNodeStatus = z.infer<typeof deviceNodeStatus>;
export type Condition = z.infer<typeof condition>;
export type ArcRecord = z.infer<typeof arcRecord>;
export type Phase = (typeof phases)[number];
export { quantityPattern, durationPattern };
