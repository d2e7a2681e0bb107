/**
 * The slice of the Kubernetes API devmig uses, behind one small interface so the controller's logic
 * can be read without client-node's parameter objects, and patched with a named field manager.
 */
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION } from '../api/names.js';
import { withOwner } from './owner.js';
import type {
  DeviceEvacuationSpec, DeviceEvacuationStatus, DeviceMigrationGroupSpec, DeviceMigrationGroupStatus, DeviceMigrationSpec, DeviceMigrationStatus,
  DeviceNodeSpec, DeviceNodeStatus, DeviceReleaseSpec, DeviceReleaseStatus,
} from '../api/types.js';

export interface Meta {
  name: string;
  uid?: string;
  generation?: number;
  resourceVersion?: string;
  deletionTimestamp?: string;
  finalizers?: string[];
  creationTimestamp?: string;
  labels?: Record<string, string>;
  managedFields?: Array<{ manager?: string; operation?: string; subresource?: string; time?: string | Date }>;
  ownerReferences?: OwnerReference[];
}
export interface DeviceMigration { apiVersion: string; kind: 'DeviceMigration'; metadata: Meta; spec: DeviceMigrationSpec; status?: DeviceMigrationStatus }
export interface DeviceNode { apiVersion: string; kind: 'DeviceNode'; metadata: Meta; spec: DeviceNodeSpec; status?: DeviceNodeStatus }
export interface DeviceMigrationGroup { apiVersion: string; kind: 'DeviceMigrationGroup'; metadata: Meta; spec: DeviceMigrationGroupSpec; status?: DeviceMigrationGroupStatus }
export interface OwnerReference { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }
export interface DeviceRelease { apiVersion: string; kind: 'DeviceRelease'; metadata: Meta; spec: DeviceReleaseSpec; status?: DeviceReleaseStatus }
export interface DeviceEvacuation { apiVersion: string; kind: 'DeviceEvacuation'; metadata: Meta; spec: DeviceEvacuationSpec; status?: DeviceEvacuationStatus }

export const FIELD_MANAGER = 'devmig';
type Plural = 'devicemigrations' | 'devicenodes' | 'deviceevacuations' | 'devicemigrationgroups' | 'devicereleases';
/** An object of devmig's that an Event can be about. */
export type Involved = Pick<DeviceMigration, 'apiVersion' | 'metadata'> & { kind: string };
const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

type RequestContext = Parameters<k8s.KubeConfig['applySecurityAuthentication']>[0];
type Dispatcher = NonNullable<ReturnType<RequestContext['getDispatcher']>>;
const KEPT = Symbol('devmig.keepAlive');

/**
 * client-node 2.0 makes a new undici Agent for every API request (applySecurityAuthentication), so
 * every request opened a new TLS connection: measured on bench:control, TLS handshakes were the
 * controller's largest cost and a large part of the API server's. One Agent per KubeConfig keeps its
 * connections alive and reuses them. (What it is made from, the kubeconfig's cluster and user, does
 * not change during a process; a token is a header, applied per request as before.)
 */
function keepAlive(kc: k8s.KubeConfig): void {
  const marked = kc as k8s.KubeConfig & { [KEPT]?: true };
  if (marked[KEPT]) return;
  marked[KEPT] = true;
  const apply = kc.applySecurityAuthentication.bind(kc);
  let shared: Dispatcher | undefined;
  kc.applySecurityAuthentication = async (context: RequestContext) => {
    await apply(context);
    const made = context.getDispatcher();
    if (!made) return;
    if (!shared) {
      shared = made;
      return;
    }
    if (made !== shared) void made.close();
    context.setDispatcher(shared);
  };
}

export class Kube {
  readonly custom: k8s.CustomObjectsApi;
  readonly core: k8s.CoreV1Api;
  readonly coordination: k8s.CoordinationV1Api;

  constructor(readonly config: k8s.KubeConfig) {
    keepAlive(config);
    this.custom = config.makeApiClient(k8s.CustomObjectsApi);
    this.core = config.makeApiClient(k8s.CoreV1Api);
    this.coordination = config.makeApiClient(k8s.CoordinationV1Api);
  }

  static fromFile(path?: string): Kube {
    const kc = new k8s.KubeConfig();
    if (path) kc.loadFromFile(path);
    else kc.loadFromDefault();
    return new Kube(kc);
  }

  /** One of devmig's objects, or undefined when there is none by that name. */
  private get<T>(plural: Plural, name: string): Promise<T | undefined> {
    return notFoundAsUndefined(this.custom.getClusterCustomObject({ group: GROUP, version: VERSION, plural, name }) as Promise<T>);
  }

  private async list<T>(plural: Plural, labelSelector?: string): Promise<T[]> {
    const r = (await this.custom.listClusterCustomObject({ group: GROUP, version: VERSION, plural, ...(labelSelector ? { labelSelector } : {}) })) as { items: T[] };
    return r.items;
  }

  /** A merge patch of status, as the field manager "devmig". */
  private async patchStatus<T>(plural: Plural, name: string, status: unknown): Promise<T> {
    return (await this.custom.patchClusterCustomObjectStatus({ group: GROUP, version: VERSION, plural, name, body: { status }, fieldManager: FIELD_MANAGER }, merge)) as T;
  }

  getMigration(name: string): Promise<DeviceMigration | undefined> {
    return this.get('devicemigrations', name);
  }

  listMigrations(labelSelector?: string): Promise<DeviceMigration[]> {
    return this.list('devicemigrations', labelSelector);
  }

  async createMigration(body: { metadata: { name: string; labels?: Record<string, string>; ownerReferences?: OwnerReference[] }; spec: Partial<DeviceMigrationSpec> }): Promise<void> {
    await this.custom.createClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicemigrations', fieldManager: FIELD_MANAGER,
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'DeviceMigration', ...body } });
  }

  /** Sets spec.cancel of a migration devmig created (an evacuation's): the one spec write it makes. */
  async cancelMigration(name: string): Promise<void> {
    await this.custom.patchClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicemigrations', name, body: { spec: { cancel: true } }, fieldManager: FIELD_MANAGER }, merge);
  }

  getEvacuation(name: string): Promise<DeviceEvacuation | undefined> {
    return this.get('deviceevacuations', name);
  }

  listEvacuations(): Promise<DeviceEvacuation[]> {
    return this.list('deviceevacuations');
  }

  patchEvacuationStatus(name: string, status: DeviceEvacuationStatus): Promise<DeviceEvacuation> {
    return this.patchStatus('deviceevacuations', name, status);
  }

  getGroup(name: string): Promise<DeviceMigrationGroup | undefined> {
    return this.get('devicemigrationgroups', name);
  }

  patchGroupStatus(name: string, status: DeviceMigrationGroupStatus): Promise<DeviceMigrationGroup> {
    return this.patchStatus('devicemigrationgroups', name, status);
  }

  getRelease(name: string): Promise<DeviceRelease | undefined> {
    return this.get('devicereleases', name);
  }

  patchReleaseStatus(name: string, status: DeviceReleaseStatus): Promise<DeviceRelease> {
    return this.patchStatus('devicereleases', name, status);
  }

  async createRelease(body: { metadata: { name?: string; generateName?: string }; spec: DeviceReleaseSpec }): Promise<DeviceRelease> {
    return (await this.custom.createClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicereleases', fieldManager: FIELD_MANAGER, fieldValidation: 'Strict',
      body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'DeviceRelease', ...body } })) as DeviceRelease;
  }

  async listNodes(labelSelector?: string): Promise<string[]> {
    const r = await this.core.listNode(labelSelector ? { labelSelector } : {});
    return r.items.map((n) => n.metadata!.name!);
  }

  patchMigrationStatus(name: string, status: DeviceMigrationStatus): Promise<DeviceMigration> {
    return this.patchStatus('devicemigrations', name, status);
  }

  /** Returns the resourceVersion written. */
  async setFinalizers(name: string, finalizers: string[], resourceVersion?: string): Promise<string | undefined> {
    const r = await this.custom.patchClusterCustomObject(
      { group: GROUP, version: VERSION, plural: 'devicemigrations', name,
        body: { metadata: { finalizers, ...(resourceVersion ? { resourceVersion } : {}) } }, fieldManager: FIELD_MANAGER }, merge,
    ) as k8s.KubernetesObject;
    return r.metadata?.resourceVersion;
  }

  getDeviceNode(name: string): Promise<DeviceNode | undefined> {
    return this.get('devicenodes', name);
  }

  listDeviceNodes(): Promise<DeviceNode[]> {
    return this.list('devicenodes');
  }

  /** Creates or updates this node's DeviceNode: spec (and owner, kube/owner.ts) once, status every heartbeat. */
  async upsertDeviceNode(spec: DeviceNodeSpec, status: DeviceNodeStatus, owner?: OwnerReference): Promise<void> {
    const name = spec.node;
    const existing = await this.getDeviceNode(name);
    const owners = owner ? withOwner(existing?.metadata.ownerReferences, owner) : undefined;
    if (!existing) {
      await this.custom.createClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicenodes', fieldManager: FIELD_MANAGER,
        body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'DeviceNode', metadata: { name, ...(owners ? { ownerReferences: owners } : {}) }, spec } });
    } else if (owners || JSON.stringify(existing.spec) !== JSON.stringify(spec)) {
      await this.custom.patchClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicenodes', name,
        body: { spec, ...(owners ? { metadata: { ownerReferences: owners } } : {}) }, fieldManager: FIELD_MANAGER }, merge);
    }
    await this.patchStatus('devicenodes', name, status);
  }

  async nodeExists(name: string): Promise<boolean> {
    return (await notFoundAsUndefined(this.core.readNode({ name }))) !== undefined;
  }

  async event(m: Involved, type: 'Normal' | 'Warning', reason: string, message: string, namespace = 'default'): Promise<void> {
    const now = new Date();
    await this.core.createNamespacedEvent({ namespace, body: {
      metadata: { generateName: `${m.metadata.name}.`, namespace },
      involvedObject: { apiVersion: m.apiVersion, kind: m.kind, name: m.metadata.name, ...(m.metadata.uid ? { uid: m.metadata.uid } : {}) },
      type, reason, message: message.slice(0, 1000),
      firstTimestamp: now, lastTimestamp: now, count: 1,
      source: { component: 'devmig-controller' }, reportingComponent: 'devmig-controller', reportingInstance: process.env.HOSTNAME ?? 'local',
    } });
  }
}

export function isNotFound(e: unknown): boolean {
  return (e as { code?: number }).code === 404;
}

async function notFoundAsUndefined<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}
