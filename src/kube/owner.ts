/**
 * What devmig makes while it runs (the PKI's Secret and CA ConfigMap, the leader Lease, each node's
 * DeviceNode) belongs to its Helm release: it names an object of the release as its owner, so that
 * Kubernetes' garbage collector removes it once `helm uninstall` removes that object. The owner is
 * the component's own ClusterRole: cluster-scoped, as a DeviceNode's owner must be (a namespaced
 * object may have a cluster-scoped owner, not the other way round), and there as long as the release.
 */
import * as k8s from '@kubernetes/client-node';
import type { Kube, OwnerReference } from './kube.js';

export async function clusterRoleOwner(kube: Kube, name: string): Promise<OwnerReference> {
  const role = await kube.config.makeApiClient(k8s.RbacAuthorizationV1Api).readClusterRole({ name });
  return { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', name, uid: role.metadata!.uid! };
}

/** The object's owner references with `owner` among them, or undefined when it already is. */
export function withOwner(current: OwnerReference[] | undefined, owner: OwnerReference): OwnerReference[] | undefined {
  return current?.some((o) => o.uid === owner.uid) ? undefined : [...(current ?? []), owner];
}

/** Adds `owner` to an object that exists (made before the release named an owner): read, then update. */
export async function adopt(kube: Kube, ref: { apiVersion: string; kind: string; name: string; namespace?: string }, owner: OwnerReference): Promise<void> {
  const api = k8s.KubernetesObjectApi.makeApiClient(kube.config);
  const obj = await api.read({ apiVersion: ref.apiVersion, kind: ref.kind, metadata: { name: ref.name, ...(ref.namespace ? { namespace: ref.namespace } : {}) } });
  const refs = withOwner(obj.metadata?.ownerReferences, owner);
  if (refs) await api.replace({ ...obj, metadata: { ...obj.metadata, ownerReferences: refs } });
}
