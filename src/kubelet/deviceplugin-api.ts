/**
 * The kubelet's device plugin API v1beta1 (k8s.io/kubelet pkg/apis/deviceplugin/v1beta1): the
 * kubelet's Registration service, and the DevicePlugin service a plugin serves. Only the fields the
 * test device plugin reads or writes; the container responses it sends are empty (no mounts, no
 * device nodes, no environment), so their fields are not declared.
 */
import type { ServiceDefinition } from '@grpc/grpc-js';
import { method, protoPackage } from './grpc.js';

/** The API version a plugin registers with (v1beta1.Version). */
export const DEVICE_PLUGIN_VERSION = 'v1beta1';
export const HEALTHY = 'Healthy';
export const UNHEALTHY = 'Unhealthy';

const type = protoPackage('v1beta1', {
  Empty: {},
  DevicePluginOptions: {
    preStartRequired: { id: 1, type: 'bool' },
    getPreferredAllocationAvailable: { id: 2, type: 'bool' },
  },
  RegisterRequest: {
    version: { id: 1, type: 'string' },
    endpoint: { id: 2, type: 'string' },
    resourceName: { id: 3, type: 'string' },
    options: { id: 4, type: 'DevicePluginOptions' },
  },
  ListAndWatchResponse: { devices: { id: 1, type: 'Device', rule: 'repeated' } },
  Device: {
    id: { id: 1, type: 'string' },
    health: { id: 2, type: 'string' },
  },
  PreStartContainerRequest: { devicesIds: { id: 1, type: 'string', rule: 'repeated' } },
  PreStartContainerResponse: {},
  PreferredAllocationRequest: { containerRequests: { id: 1, type: 'ContainerPreferredAllocationRequest', rule: 'repeated' } },
  ContainerPreferredAllocationRequest: {
    availableDeviceIds: { id: 1, type: 'string', rule: 'repeated' },
    mustIncludeDeviceIds: { id: 2, type: 'string', rule: 'repeated' },
    allocationSize: { id: 3, type: 'int32' },
  },
  PreferredAllocationResponse: { containerResponses: { id: 1, type: 'ContainerPreferredAllocationResponse', rule: 'repeated' } },
  ContainerPreferredAllocationResponse: { deviceIds: { id: 1, type: 'string', rule: 'repeated' } },
  AllocateRequest: { containerRequests: { id: 1, type: 'ContainerAllocateRequest', rule: 'repeated' } },
  ContainerAllocateRequest: { devicesIds: { id: 1, type: 'string', rule: 'repeated' } },
  AllocateResponse: { containerResponses: { id: 1, type: 'ContainerAllocateResponse', rule: 'repeated' } },
  ContainerAllocateResponse: {},
});

export type Empty = Record<string, never>;
export interface DevicePluginOptions { preStartRequired: boolean; getPreferredAllocationAvailable: boolean }
export interface RegisterRequest { version: string; endpoint: string; resourceName: string; options: DevicePluginOptions | null }
export interface Device { id: string; health: string }
export interface ListAndWatchResponse { devices: Device[] }
export interface PreStartContainerRequest { devicesIds: string[] }
export interface ContainerPreferredAllocationRequest { availableDeviceIds: string[]; mustIncludeDeviceIds: string[]; allocationSize: number }
export interface PreferredAllocationRequest { containerRequests: ContainerPreferredAllocationRequest[] }
export interface PreferredAllocationResponse { containerResponses: { deviceIds: string[] }[] }
export interface AllocateRequest { containerRequests: { devicesIds: string[] }[] }
export interface AllocateResponse { containerResponses: Empty[] }

export const registration = {
  Register: method<RegisterRequest, Empty>('v1beta1.Registration', 'Register', type('RegisterRequest'), type('Empty')),
} satisfies ServiceDefinition;

const PLUGIN = 'v1beta1.DevicePlugin';

export const devicePlugin = {
  GetDevicePluginOptions: method<Empty, DevicePluginOptions>(PLUGIN, 'GetDevicePluginOptions', type('Empty'), type('DevicePluginOptions')),
  ListAndWatch: method<Empty, ListAndWatchResponse>(PLUGIN, 'ListAndWatch', type('Empty'), type('ListAndWatchResponse'), true),
  GetPreferredAllocation: method<PreferredAllocationRequest, PreferredAllocationResponse>(PLUGIN, 'GetPreferredAllocation',
    type('PreferredAllocationRequest'), type('PreferredAllocationResponse')),
  Allocate: method<AllocateRequest, AllocateResponse>(PLUGIN, 'Allocate', type('AllocateRequest'), type('AllocateResponse')),
  PreStartContainer: method<PreStartContainerRequest, Empty>(PLUGIN, 'PreStartContainer', type('PreStartContainerRequest'),
    type('PreStartContainerResponse')),
} satisfies ServiceDefinition;
