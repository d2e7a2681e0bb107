/**
 * Inside the guest: the agent's discovery finds real mtty mdevs with their group (and cdev, on the
 * cdev kernel), an agent opens them and reports their flags, and `devmig device probe` takes an mdev.
 */
import pino from 'pino';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAgentConfig } from '../../../src/agent/config.js';
import { openDevices } from '../../../src/agent/devices.js';
import { discoverVfioDevices, mdevNameOf } from '../../../src/agent/discover.js';
import { lastJson, runCli } from '../../helpers/cli.js';
import { cleanup, guestKernel, mdev, paths } from './helpers.js';

afterEach(cleanup);

it('finds the mdevs, with their IOMMU group, and their cdev where the kernel has VFIO_DEVICE_CDEV', async () => {
  const a = await mdev('mtty-2');
  const b = await mdev('mtty-1');
  const found = (await discoverVfioDevices('/sys', '/dev')).filter((d) => d.address === a || d.address === b);
  expect(found.map((d) => [d.name, d.kind, d.driver])).toEqual(
    [[mdevNameOf(a), 'mdev', 'mtty-2'], [mdevNameOf(b), 'mdev', 'mtty-1']].sort((x, y) => x[0]!.localeCompare(y[0]!)));
  for (const d of found) {
    expect(d.group).toMatch(/^\/dev\/vfio\/\d+$/);
    if (guestKernel === 'cdev') expect(d.cdev).toMatch(/^\/dev\/vfio\/devices\/vfio\d+$/);
    else expect(d.cdev).toBeUndefined(); // sysfs lists vfio-dev/vfioN, but without a `dev`: no cdev
  }
});

it('an agent opens the mdevs it is given, by the path the kernel offers, and reports their flags', async () => {
  const a = await mdev();
  await mdev(); // not this agent's
  const dir = await mkdtemp(join(tmpdir(), 'devmig-guest-agent-'));
  const config = parseAgentConfig({
    node: 'guest', stateDir: dir, tls: { ca: 'x', cert: 'x', key: 'x' }, holder: false,
    devices: { kernel: { include: [mdevNameOf(a)] } },
  });
  const reg = await openDevices(config, undefined, pino({ level: 'silent' }));
  try {
    expect(reg.list().map((d) => [d.name, d.kind, d.flags])).toEqual([[mdevNameOf(a), 'kernel', 7]]);
    expect(await reg.get(mdevNameOf(a))!.device.getState()).toBe('RUNNING');
  } finally {
    await reg.closeAll();
    await rm(dir, { recursive: true, force: true });
  }
});

it.each(paths)('devmig device probe UUID --via %s: flags, state and the stop-copy size', async (via) => {
  const a = await mdev();
  const r = await runCli(['device', 'probe', a, '--via', via, '-o', 'json']);
  expect(r.stderr).toBe('');
  expect(lastJson(r.stdout)).toEqual({ device: a, flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING', stopCopyBytes: 96 });
  const group = (await discoverVfioDevices('/sys', '/dev')).find((d) => d.address === a)!.group!;
  const byGroup = await runCli(['device', 'probe', group, '--device', a, '-o', 'json']);
  expect(lastJson(byGroup.stdout)).toMatchObject({ flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], stopCopyBytes: 96 });
  const missing = await runCli(['device', 'probe', '00000000-0000-0000-0000-000000000000']);
  expect([missing.code, missing.stderr]).toEqual([1, expect.stringMatching(/no VFIO device with that address/)]);
});
