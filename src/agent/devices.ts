/**
 * The node's devices: the simulated ones from configuration and the kernel's VFIO devices, each with a
 * per-device mutex so operations on one device never interleave.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { DeviceError, type MigrationDevice } from '../vfio/device.js';
import { adoptKernelDevice, openKernelDevice, type KernelDevice } from '../vfio/kernel.js';
import { discoverVfioDevices, type FoundDevice } from './discover.js';
import { takeFds } from './fdpass.js';
import { handOver, readHeld } from './holder.js';
import { SimDevice } from '../vfio/sim/device.js';
import { flagNames } from '../vfio/uapi.js';
import type { AgentConfig } from './config.js';

export interface ManagedDevice {
  readonly name: string;
  readonly kind: 'simulated' | 'kernel';
  readonly device: MigrationDevice;
  readonly flags: number;
  /**
   * The device was reset as this process opened it (the kernel resets on last close: nothing kept
   * it open across the restart): whatever the journal says it held is gone.
   */
  readonly resetAtOpen: boolean;
  /** Runs `fn` when every earlier operation on this device has finished. */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
}

export class DeviceRegistry {
  private readonly devices = new Map<string, ManagedDevice>();

  get(name: string): ManagedDevice | undefined {
    return this.devices.get(name);
  }

  list(): ManagedDevice[] {
    return [...this.devices.values()];
  }

  add(kind: ManagedDevice['kind'], device: MigrationDevice, flags: number, resetAtOpen = false): void {
    if (this.devices.has(device.name)) throw new Error(`two devices are named "${device.name}"; names must be unique on a node`);
    let tail: Promise<unknown> = Promise.resolve();
    this.devices.set(device.name, {
      name: device.name,
      kind,
      device,
      flags,
      resetAtOpen,
      exclusive: <T>(fn: () => Promise<T>): Promise<T> => {
        const run = tail.then(fn, fn);
        tail = run.catch(() => undefined);
        return run;
      },
    });
  }

  async closeAll(): Promise<void> {
    for (const d of this.devices.values()) await d.device.close();
    this.devices.clear();
  }
}

export async function openDevices(config: AgentConfig, holder: number | undefined, log: Logger): Promise<DeviceRegistry> {
  const reg = new DeviceRegistry();
  if (config.devices.kernel) await openKernelDevices(reg, config.devices.kernel, log, holder, config.stateDir);
  const sim = config.devices.simulated;
  for (const d of sim?.devices ?? []) {
    const dev = await SimDevice.open({
      dir: sim!.dir, name: d.name, stateSize: d.stateSize, flags: d.flags, dirtyRate: d.dirtyRate,
      ...(d.pageSize ? { pageSize: d.pageSize } : {}), ...(holder ? { holder } : {}),
    });
    reg.add('simulated', dev, d.flags, dev.resetAtOpen);
  }
  return reg;
}

export function describeFlags(flags: number): string[] {
  return flagNames(flags);
}

/**
 * Opens every vfio-bound PCI function and mdev found in sysfs (those `include` names, when set). One without migration support is listed with
 * no flags (the controller refuses it by name); one that cannot be opened (a VM holds it) is skipped
 * with a warning, since its fd belongs to someone else.
 */
async function openKernelDevices(reg: DeviceRegistry, cfg: NonNullable<AgentConfig['devices']['kernel']>, log: Logger,
  holder: number | undefined, stateDir: string): Promise<void> {
  const opts = cfg.libc ? { libc: cfg.libc } : {};
  const held = holder ? await readHeld(stateDir, holder) : {};
  const wanted = cfg.include ? new Set(cfg.include) : undefined;
  for (const found of await discoverVfioDevices(cfg.sysfs, cfg.dev)) {
    if (wanted && !wanted.has(found.name) && !wanted.has(found.address)) continue;
    let dev: KernelDevice | undefined;
    try {
      dev = await openOrAdopt(found, cfg, opts, { holder, held, stateDir });
    } catch (e) {
      log.warn({ device: found.name, address: found.address, err: (e as Error).message }, 'cannot open vfio device; skipped');
      continue;
    }
    if (!dev) {
      log.warn({ device: found.name, address: found.address }, 'vfio device has neither a cdev nor an IOMMU group; skipped');
      continue;
    }
    const flags = await dev.probe().catch((e: unknown) => {
      if (e instanceof DeviceError && e.errno === 'ENOTTY') return 0;
      throw e;
    });
    // Not adopted from a holder: opened anew, after a last close (and its reset) if it was open before.
    reg.add('kernel', new NamedDevice(found.name, dev), flags, !(holder && held[found.name]));
    log.info({ device: found.name, address: found.address, driver: found.driver, flags: flagNames(flags), adopted: Boolean(held[found.name]) }, 'kernel vfio device');
  }
}

/**
 * A device the holder keeps open is adopted (copies of its fds, the device never closed); any other
 * is opened and its fds handed to the holder, so that from now on an agent crash does not reset it.
 */
async function openOrAdopt(found: FoundDevice, cfg: NonNullable<AgentConfig['devices']['kernel']>, opts: { libc?: string },
  h: { holder: number | undefined; held: Record<string, number[]>; stateDir: string }): Promise<KernelDevice | undefined> {
  const { holder, held, stateDir } = h;
  const kept = held[found.name];
  if (holder && kept) return adoptKernelDevice(found.address, takeFds(holder, kept), opts);
  const spec = found.cdev ? { cdev: found.cdev, iommu: join(cfg.dev, 'iommu') }
    : found.group ? { group: found.group, device: found.address, container: join(cfg.dev, 'vfio/vfio') } : undefined;
  if (!spec) return undefined;
  const dev = await openKernelDevice(spec, opts);
  if (holder) await handOver(stateDir, holder, { [found.name]: dev.fds });
  return dev;
}

/** A kernel device under its object name (pci-0000-3b-00-1, mdev-<uuid>) rather than its path. */
class NamedDevice implements MigrationDevice {
  constructor(readonly name: string, private readonly inner: MigrationDevice) {}
  probe = () => this.inner.probe();
  getState = () => this.inner.getState();
  setState = (s: Parameters<MigrationDevice['setState']>[0]) => this.inner.setState(s);
  precopyInfo = () => this.inner.precopyInfo();
  stopCopySize = () => this.inner.stopCopySize();
  reset = () => this.inner.reset();
  close = () => this.inner.close();
}
