/**
 * Agents with kernel devices: found through a sysfs tree made by the test, opened by both VFIO paths
 * through the C double of the kernel's ioctls, and migrated node to node through the relay.
 */
import koffi from 'koffi';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Agent } from '../../src/agent/agent.js';
import { deviceNameOf, discoverVfioDevices } from '../../src/agent/discover.js';
import { newTicket } from '../../src/agent/identity.js';
import { buildDouble } from '../helpers/cbuild.js';
import { agentConfig, controllerClient, makePki, startAgent, until, type Pki } from '../helpers/agents.js';

let dir: string;
let sysfs: string;
let libc: string;
let pki: Pki;

async function pciFunction(bdf: string, driver: string | undefined, extra: { cdev?: string; group?: string } = {}) {
  const d = join(sysfs, 'bus/pci/devices', bdf);
  await mkdir(d, { recursive: true });
  if (driver) await symlink(`../../../bus/pci/drivers/${driver}`, join(d, 'driver'));
  if (extra.cdev) await cdevEntry(d, extra.cdev);
  if (extra.group) await symlink(`../../../kernel/iommu_groups/${extra.group}`, join(d, 'iommu_group'));
}

/** vfio-dev/vfioN with its `dev` attribute: a character device, as on a kernel with VFIO_DEVICE_CDEV. */
async function cdevEntry(dir: string, cdev: string) {
  await mkdir(join(dir, 'vfio-dev', cdev), { recursive: true });
  await writeFile(join(dir, 'vfio-dev', cdev, 'dev'), '239:0\n');
}

/** An mdev as the mdev bus shows it: its type, its group, and its cdev where the kernel has them. */
async function mdev(uuid: string, type: string, group: string, cdev?: string) {
  const d = join(sysfs, 'bus/mdev/devices', uuid);
  await mkdir(d, { recursive: true });
  await symlink(`../../../devices/virtual/mtty/mtty/mdev_supported_types/${type}`, join(d, 'mdev_type'));
  await symlink(`../../../kernel/iommu_groups/${group}`, join(d, 'iommu_group'));
  if (cdev) await cdevEntry(d, cdev);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'devmig-kagent-'));
  sysfs = join(dir, 'sys');
  libc = await buildDouble();
  pki = await makePki(dir);
  await pciFunction('0000:3b:00.1', 'vfio-pci', { cdev: 'vfio0', group: '40' });
  await pciFunction('0000:3b:00.2', 'mlx5_vfio_pci', { group: '41' });
  await pciFunction('0000:00:1f.2', 'ahci', { group: '7' });
  await pciFunction('0000:3b:00.3', undefined, { group: '42' });
  await mdev('83b8f4f2-509f-382f-3c1e-e6bfe0fa1001', 'mtty-2', '43');
  // Every VFIO device has vfio-dev/vfioN in sysfs; without VFIO_DEVICE_CDEV it has no `dev`: no cdev.
  await mkdir(join(sysfs, 'bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001/vfio-dev/vfio3'), { recursive: true });
  await mkdir(join(sysfs, 'bus/mdev/devices/not-a-uuid'), { recursive: true });
});
afterAll(async () => { await rm(dir, { recursive: true, force: true }); });

it('finds the functions bound to vfio drivers and the mdevs, with their cdev or group', async () => {
  expect(await discoverVfioDevices(sysfs, '/dev')).toEqual([
    { name: 'pci-0000-3b-00-1', kind: 'pci', address: '0000:3b:00.1', driver: 'vfio-pci', cdev: '/dev/vfio/devices/vfio0', group: '/dev/vfio/40' },
    { name: 'pci-0000-3b-00-2', kind: 'pci', address: '0000:3b:00.2', driver: 'mlx5_vfio_pci', group: '/dev/vfio/41' },
    { name: 'mdev-83b8f4f2-509f-382f-3c1e-e6bfe0fa1001', kind: 'mdev', address: '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001', driver: 'mtty-2', group: '/dev/vfio/43' },
  ]);
  expect(deviceNameOf('0000:AF:00.7')).toBe('pci-0000-af-00-7');
});

it('migrates a kernel device between two agents, exactly', async () => {
  const kernel = { sysfs, dev: '/dev', libc };
  // The double's own settings (not the environment, which other tests in this worker share).
  const configure = koffi.load(libc).func('int vfio_double_configure(const char *settings)') as (s: string) => number;
  configure(`seed=5 size=${3 * 2 ** 20}`);
  const source: Agent = await startAgent(await agentConfig(join(dir, 'a'), pki, 'node-a', '127.0.0.2', [], { devices: { kernel } }));
  configure('seed=9');
  const target: Agent = await startAgent(await agentConfig(join(dir, 'b'), pki, 'node-b', '127.0.0.3', [], { devices: { kernel } }));
  const src = controllerClient(source, pki);
  const dst = controllerClient(target, pki);
  const digest = koffi.load(libc).func('uint32_t vfio_double_digest(int fd)') as (fd: number) => number;
  const fdOf = (a: Agent, name: string) => (a.ctx.devices.get(name)!.device as unknown as { inner: { fd: number } }).inner.fd;
  try {
    const listed = await src.devices();
    expect(listed.devices.map((d) => [d.name, d.kind, d.flags.join(','), d.state])).toEqual([
      ['pci-0000-3b-00-1', 'kernel', 'STOP_COPY,P2P,PRE_COPY', 'RUNNING'],
      ['pci-0000-3b-00-2', 'kernel', 'STOP_COPY,P2P,PRE_COPY', 'RUNNING'],
      ['mdev-83b8f4f2-509f-382f-3c1e-e6bfe0fa1001', 'kernel', 'STOP_COPY,P2P,PRE_COPY', 'RUNNING'], // opened by its UUID in its group
    ]);
    const dev = 'pci-0000-3b-00-2'; // the group/container path on both sides
    const before = digest(fdOf(source, dev));
    expect(digest(fdOf(target, dev))).not.toBe(before);
    const ticket = newTicket();
    await dst.receive(dev, { migration: 'k1', op: 'prepare', ticket, sourceNode: 'node-a' });
    await src.send(dev, { migration: 'k1', op: 'send', ticket, target: { node: 'node-b', device: dev, endpoint: target.endpoint } });
    await until('verified', async () => (await src.migration('k1')).sessions[0]?.phase === 'Verified');
    const commit = await dst.commit(dev, { migration: 'k1', op: 'commit' });
    expect(commit.arcs).toEqual([expect.objectContaining({ from: 'RESUMING', to: 'STOP', result: 'Succeeded' })]);
    await dst.setState(dev, { migration: 'k1', op: 'run', state: 'RUNNING' });
    expect(digest(fdOf(target, dev))).toBe(before);
  } finally {
    configure('reset');
    src.close();
    dst.close();
    await source.stop();
    await target.stop();
  }
});
