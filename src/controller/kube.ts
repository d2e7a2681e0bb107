/**
 * The slice of the Kubernetes API devmig uses, behind one small interface so the controller's logic
 * can be read without client-node's parameter objects, and patched with a named field manager.
 */
import * as k8s from '@kubernetes/client-node';
import { GROUP, VERSION } from '../api/names.js';
import type {
  DeviceEvacuationSpec, DeviceEvacuationStatus, DeviceMigrationGroupSpec, DeviceMigrationGroupStatus, DeviceMigrationSpec, DeviceMigrationStatus,
  DeviceNodeSpec, DeviceNodeStatus,
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
}
export interface DeviceMigration { apiVersion: string; kind: 'DeviceMigration'; metadata: Meta; spec: DeviceMigrationSpec; status?: DeviceMigrationStatus }
export interface DeviceNode { apiVersion: string; kind: 'DeviceNode'; metadata: Meta; spec: DeviceNodeSpec; status?: DeviceNodeStatus }
export interface DeviceMigrationGroup { apiVersion: string; kind: 'DeviceMigrationGroup'; metadata: Meta; spec: DeviceMigrationGroupSpec; status?: DeviceMigrationGroupStatus }
export interface OwnerReference { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }
export interface DeviceEvacuation { apiVersion: string; kind: 'DeviceEvacuation'; metadata: Meta; spec: DeviceEvacuationSpec; status?: DeviceEvacuationStatus }

export const FIELD_MANAGER = 'devmig';
type Plural = 'devicemigrations' | 'devicenodes' | 'deviceevacuations' | 'devicemigrationgroups';
const merge = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch);

export class Kube {
  readonly custom: k8s.CustomObjectsApi;
  readonly core: k8s.CoreV1Api;
  readonly coordination: k8s.CoordinationV1Api;

  constructor(readonly config: k8s.KubeConfig) {
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

  async listNodes(labelSelector?: string): Promise<string[]> {
    const r = await this.core.listNode(labelSelector ? { labelSelector } : {});
    return r.items.map((n) => n.metadata!.name!);
  }

  patchMigrationStatus(name: string, status: DeviceMigrationStatus): Promise<DeviceMigration> {
    return this.patchStatus('devicemigrations', name, status);
  }

  async setFinalizers(name: string, finalizers: string[], resourceVersion?: string): Promise<void> {
    await this.custom.patchClusterCustomObject(
      { group: GROUP, version: VERSION, plural: 'devicemigrations', name,
        body: { metadata: { finalizers, ...(resourceVersion ? { resourceVersion } : {}) } }, fieldManager: FIELD_MANAGER }, merge,
    );
  }

  getDeviceNode(name: string): Promise<DeviceNode | undefined> {
    return this.get('devicenodes', name);
  }

  listDeviceNodes(): Promise<DeviceNode[]> {
    return this.list('devicenodes');
  }

  /** Creates or updates this node's DeviceNode: spec once, status every heartbeat. */
  async upsertDeviceNode(spec: DeviceNodeSpec, status: DeviceNodeStatus): Promise<void> {
    const name = spec.node;
    const existing = await this.getDeviceNode(name);
    if (!existing) {
      await this.custom.createClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicenodes', fieldManager: FIELD_MANAGER,
        body: { apiVersion: `${GROUP}/${VERSION}`, kind: 'DeviceNode', metadata: { name }, spec } });
    } else if (JSON.stringify(existing.spec) !== JSON.stringify(spec)) {
      await this.custom.patchClusterCustomObject({ group: GROUP, version: VERSION, plural: 'devicenodes', name, body: { spec }, fieldManager: FIELD_MANAGER }, merge);
    }
    await this.patchStatus('devicenodes', name, status);
  }

  async nodeExists(name: string): Promise<boolean> {
    return (await notFoundAsUndefined(this.core.readNode({ name }))) !== undefined;
  }

  async event(m: DeviceMigration, type: 'Normal' | 'Warning', reason: string, message: string, namespace = 'default'): Promise<void> {
    const now = new Date();
    await this.core.createNamespacedEvent({ namespace, body: {
      metadata: { generateName: `${m.metadata.name}.`, namespace },
      involvedObject: { apiVersion: m.apiVersion, kind: 'DeviceMigration', name: m.metadata.name, ...(m.metadata.uid ? { uid: m.metadata.uid } : {}) },
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
