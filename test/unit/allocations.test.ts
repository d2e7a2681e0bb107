/**
 * Which of the node's devices the kubelet gave to pods: device IDs from PodResources matched to
 * devmig's devices by BDF, mdev UUID, name or an explicit map, per resource name; and the config
 * section that says which, refused field by field when it is wrong.
 */
import { z } from 'zod';
import { mapAllocations, normalizeBdf, podResourcesConfigSchema, type NodeDevice, type PodResourcesConfig } from '../../src/kubelet/allocations.js';
import type { ContainerAllocation } from '../../src/kubelet/podresources.js';

const DEVICES: NodeDevice[] = [
  { name: 'sim-0' },
  { name: 'sim-1' },
  { name: 'pci-0000-3b-00-1', pciAddress: '0000:3b:00.1' },
  { name: 'pci-0000-af-10-2', pciAddress: '0000:AF:10.2' },
  { name: 'mdev-a', mdevUuid: '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001' },
];

const at = (pod: string, container: string, resourceName: string, deviceIds: string[], ns = 'default'): ContainerAllocation =>
  ({ namespace: ns, pod, container, resourceName, deviceIds });
const use = (pod: string, container: string, resourceName: string, deviceId: string) => ({ pod, container, resourceName, deviceId });

interface Case {
  name: string;
  allocations: ContainerAllocation[];
  resources?: PodResourcesConfig['resources'];
  /** Only the devices that have uses; every other device must map to []. */
  expect: Record<string, ReturnType<typeof use>[]>;
  unmatched?: [string, string][];
}

const CASES: Case[] = [
  {
    name: 'kernel devices match by BDF whatever the resource, in any case, with or without the domain',
    allocations: [at('a', 'c', 'intel.com/sriov', ['0000:3B:00.1']), at('b', 'c', 'vendor.example/vf', ['af:10.2'])],
    expect: { 'pci-0000-3b-00-1': [use('default/a', 'c', 'intel.com/sriov', '0000:3B:00.1')], 'pci-0000-af-10-2': [use('default/b', 'c', 'vendor.example/vf', 'af:10.2')] },
  },
  {
    name: 'kernel mdevs match by UUID whatever the resource',
    allocations: [at('a', 'c', 'nvidia.com/vgpu', ['83B8F4F2-509F-382F-3C1E-E6BFE0FA1001'])],
    expect: { 'mdev-a': [use('default/a', 'c', 'nvidia.com/vgpu', '83B8F4F2-509F-382F-3C1E-E6BFE0FA1001')] },
  },
  {
    name: 'a simulated device matches only through the config: its name is no BDF or UUID',
    allocations: [at('a', 'c', 'devmig.io/sim', ['sim-0'])],
    expect: {},
    unmatched: [['devmig.io/sim', 'sim-0']],
  },
  {
    name: 'config `name`: the ID is the device\'s name, simulated or kernel',
    allocations: [at('a', 'c', 'devmig.io/sim', ['sim-1', 'pci-0000-3b-00-1', 'sim-9'])],
    resources: { 'devmig.io/sim': 'name' },
    expect: { 'sim-1': [use('default/a', 'c', 'devmig.io/sim', 'sim-1')], 'pci-0000-3b-00-1': [use('default/a', 'c', 'devmig.io/sim', 'pci-0000-3b-00-1')] },
    unmatched: [['devmig.io/sim', 'sim-9']],
  },
  {
    name: 'config `pciAddress`: only BDFs, a UUID under that resource is not ours',
    allocations: [at('a', 'c', 'intel.com/sriov', ['0000:3b:00.1', '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001'])],
    resources: { 'intel.com/sriov': 'pciAddress' },
    expect: { 'pci-0000-3b-00-1': [use('default/a', 'c', 'intel.com/sriov', '0000:3b:00.1')] },
    unmatched: [['intel.com/sriov', '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001']],
  },
  {
    name: 'config `mdevUuid`: only UUIDs, a BDF under that resource is not ours',
    allocations: [at('a', 'c', 'nvidia.com/vgpu', ['83b8f4f2-509f-382f-3c1e-e6bfe0fa1001', '0000:3b:00.1'])],
    resources: { 'nvidia.com/vgpu': 'mdevUuid' },
    expect: { 'mdev-a': [use('default/a', 'c', 'nvidia.com/vgpu', '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001')] },
    unmatched: [['nvidia.com/vgpu', '0000:3b:00.1']],
  },
  {
    name: 'an explicit map; an entry naming a device this node lacks is not ours',
    allocations: [at('a', 'c', 'example.com/gpu', ['GPU-fef8089b', 'GPU-0000', 'GPU-unmapped'])],
    resources: { 'example.com/gpu': { map: { 'GPU-fef8089b': 'sim-0', 'GPU-0000': 'sim-7' } } },
    expect: { 'sim-0': [use('default/a', 'c', 'example.com/gpu', 'GPU-fef8089b')] },
    unmatched: [['example.com/gpu', 'GPU-0000'], ['example.com/gpu', 'GPU-unmapped']],
  },
  {
    name: 'one device in two pods\' containers (an init container\'s device passes to the app): both listed, sorted',
    allocations: [at('z', 'app', 'devmig.io/sim', ['sim-0']), at('z', 'init', 'devmig.io/sim', ['sim-0']), at('a', 'c', 'devmig.io/sim', ['sim-0'], 'ml')],
    resources: { 'devmig.io/sim': 'name' },
    expect: { 'sim-0': [use('default/z', 'app', 'devmig.io/sim', 'sim-0'), use('default/z', 'init', 'devmig.io/sim', 'sim-0'), use('ml/a', 'c', 'devmig.io/sim', 'sim-0')] },
  },
  {
    name: 'the same entry twice counts once; an unmatched ID is listed once however often it comes',
    allocations: [at('a', 'c', 'devmig.io/sim', ['sim-0', 'sim-0']), at('a', 'c', 'devmig.io/sim', ['sim-0']), at('b', 'c', 'other.io/x', ['q']), at('c', 'c', 'other.io/x', ['q'])],
    resources: { 'devmig.io/sim': 'name' },
    expect: { 'sim-0': [use('default/a', 'c', 'devmig.io/sim', 'sim-0')] },
    unmatched: [['other.io/x', 'q']],
  },
  {
    name: 'no allocations: every device free',
    allocations: [],
    expect: {},
  },
];

it.each(CASES)('$name', ({ allocations, resources, expect: uses, unmatched }) => {
  const r = mapAllocations(allocations, DEVICES, resources ?? {});
  expect(Object.keys(r.byDevice).sort()).toEqual(DEVICES.map((d) => d.name).sort());
  for (const d of DEVICES) expect([d.name, r.byDevice[d.name]]).toEqual([d.name, uses[d.name] ?? []]);
  expect(r.unmatched).toEqual((unmatched ?? []).map(([resourceName, deviceId]) => ({ resourceName, deviceId })));
});

it('a DRA device maps by its driver\'s name and carries its claim', () => {
  const dra: ContainerAllocation = {
    namespace: 'ml', pod: 'inference', container: 'server', resourceName: 'gpu.example.com', deviceIds: ['gpu-3'],
    claim: { name: 'gpu-claim', namespace: 'ml', driver: 'gpu.example.com', pool: 'node-1', device: 'gpu-3' },
  };
  const r = mapAllocations([dra], DEVICES, { 'gpu.example.com': { map: { 'gpu-3': 'sim-1' } } });
  expect(r.byDevice['sim-1']).toEqual([{ pod: 'ml/inference', container: 'server', resourceName: 'gpu.example.com', deviceId: 'gpu-3', claim: 'ml/gpu-claim' }]);
  expect(r.unmatched).toEqual([]);
});

it.each([
  ['0000:3b:00.1', '0000:3b:00.1'], ['0000:3B:00.1', '0000:3b:00.1'], ['3b:00.1', '0000:3b:00.1'], ['10000:00:1f.7', '10000:00:1f.7'],
  [' 0000:3b:00.1 ', '0000:3b:00.1'], ['0000:3b:20.1', undefined], ['0000:3b:00.8', undefined], ['sim-0', undefined], ['3b-00-1', undefined],
])('normalizeBdf(%j) is %j', (input, out) => {
  expect(normalizeBdf(input)).toBe(out);
});

describe('the podResources config section', () => {
  it('defaults: the kubelet\'s socket, 5 s, no mappings', () => {
    expect(podResourcesConfigSchema.parse({})).toEqual({ socket: '/var/lib/kubelet/pod-resources/kubelet.sock', timeoutSeconds: 5, resources: {} });
  });

  it('takes each kind of mapping, for device plugin resources and DRA drivers', () => {
    const resources = {
      'devmig.io/sim': 'name', 'intel.com/sriov': 'pciAddress', 'nvidia.com/vgpu': 'mdevUuid',
      'example.com/gpu': { map: { 'GPU-fef8089b-4820': 'pci-0000-3b-00-1' } }, 'gpu.example.com': 'name',
    };
    expect(podResourcesConfigSchema.parse({ resources }).resources).toEqual(resources);
  });

  it.each([
    [{ resources: { 'devmig.io/sim': 'bdf' } }, 'resources["devmig.io/sim"]', /must be "pciAddress", "mdevUuid", "name", or \{ map/],
    [{ resources: { 'devmig.io/sim': { mapping: {} } } }, 'resources["devmig.io/sim"]', /must be "pciAddress"/],
    [{ resources: { 'devmig.io/sim': { map: { 'GPU-1': 'Sim_0' } } } }, 'resources["devmig.io/sim"].map["GPU-1"]', /lowercase DNS name/],
    [{ resources: { 'devmig.io/sim': { map: { '': 'sim-0' } } } }, 'resources["devmig.io/sim"].map', /has an empty device ID/],
    [{ resources: { 'Devmig.io/sim': 'name' } }, 'resources["Devmig.io/sim"]', /resource name \(vendor.example\/gpu\) or a DRA driver's name/],
    [{ resources: { 'devmig.io/': 'name' } }, 'resources["devmig.io/"]', /resource name/],
    [{ resources: { 'kubernetes.io/sim': 'name' } }, 'resources["kubernetes.io/sim"]', /resource name/],
    [{ timeoutSeconds: 0 }, 'timeoutSeconds', /expected number to be >0/i],
    [{ socket: '' }, 'socket', /too small|>=1/i],
    [{ sockets: '/x' }, '', /Unrecognized key: "sockets"/],
  ])('%j is refused at %s', (input, path, message) => {
    const r = podResourcesConfigSchema.safeParse(input);
    expect(r.success).toBe(false);
    const text = z.prettifyError(r.error!);
    expect(text).toMatch(message);
    if (path) expect(text).toContain(`→ at ${path}`);
  });
});
