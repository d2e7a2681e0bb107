/**
 * The kubelet's PodResources v1 API (service v1.PodResourcesLister, k8s.io/kubelet
 * pkg/apis/podresources/v1), only the fields devmig reads: which devices each container was given,
 * by device plugins (resource name and device IDs) and by DRA (claim, driver, pool, device), and
 * which devices the kubelet can allocate.
 */
import type { ServiceDefinition } from '@grpc/grpc-js';
import { method, protoPackage } from './grpc.js';

const type = protoPackage('v1', {
  ListPodResourcesRequest: {},
  ListPodResourcesResponse: { podResources: { id: 1, type: 'PodResources', rule: 'repeated' } },
  PodResources: {
    name: { id: 1, type: 'string' },
    namespace: { id: 2, type: 'string' },
    containers: { id: 3, type: 'ContainerResources', rule: 'repeated' },
  },
  ContainerResources: {
    name: { id: 1, type: 'string' },
    devices: { id: 2, type: 'ContainerDevices', rule: 'repeated' },
    dynamicResources: { id: 5, type: 'DynamicResource', rule: 'repeated' },
  },
  ContainerDevices: {
    resourceName: { id: 1, type: 'string' },
    deviceIds: { id: 2, type: 'string', rule: 'repeated' },
  },
  // Field 1 (class_name) was removed from the API in Kubernetes 1.31.
  DynamicResource: {
    claimName: { id: 2, type: 'string' },
    claimNamespace: { id: 3, type: 'string' },
    claimResources: { id: 4, type: 'ClaimResource', rule: 'repeated' },
  },
  ClaimResource: {
    driverName: { id: 2, type: 'string' },
    poolName: { id: 3, type: 'string' },
    deviceName: { id: 4, type: 'string' },
  },
  AllocatableResourcesRequest: {},
  AllocatableResourcesResponse: { devices: { id: 1, type: 'ContainerDevices', rule: 'repeated' } },
});

export type Empty = Record<string, never>;
export interface ContainerDevicesMsg { resourceName: string; deviceIds: string[] }
export interface ClaimResourceMsg { driverName: string; poolName: string; deviceName: string }
export interface DynamicResourceMsg { claimName: string; claimNamespace: string; claimResources: ClaimResourceMsg[] }
export interface ContainerResourcesMsg { name: string; devices: ContainerDevicesMsg[]; dynamicResources: DynamicResourceMsg[] }
export interface PodResourcesMsg { name: string; namespace: string; containers: ContainerResourcesMsg[] }
export interface ListPodResourcesResponse { podResources: PodResourcesMsg[] }
export interface AllocatableResourcesResponse { devices: ContainerDevicesMsg[] }

const SERVICE = 'v1.PodResourcesLister';

export const podResourcesLister = {
  List: method<Empty, ListPodResourcesResponse>(SERVICE, 'List', type('ListPodResourcesRequest'), type('ListPodResourcesResponse')),
  GetAllocatableResources: method<Empty, AllocatableResourcesResponse>(SERVICE, 'GetAllocatableResources',
    type('AllocatableResourcesRequest'), type('AllocatableResourcesResponse')),
} satisfies ServiceDefinition;
