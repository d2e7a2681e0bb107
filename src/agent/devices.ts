/**
 * The node's devices: the simulated ones from configuration and the kernel's VFIO devices, each with a
 * per-device mutex so operations on one device never interleave.
 */
import type { MigrationDevice } from '../vfio/device.js';
import { SimDevice } from '../vfio/sim/device.js';
import { flagNames } from '../vfio/uapi.js';
import type { AgentConfig } from './config.js';

export interface ManagedDevice {
  readonly name: string;
  readonly kind: 'simulated' | 'kernel';
  readonly device: MigrationDevice;
  readonly flags: number;
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

  add(kind: ManagedDevice['kind'], device: MigrationDevice, flags: number): void {
    if (this.devices.has(device.name)) throw new Error(`two devices are named "${device.name}"; names must be unique on a node`);
    let tail: Promise<unknown> = Promise.resolve();
    this.devices.set(device.name, {
      name: device.name,
      kind,
      device,
      flags,
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

export async function openDevices(config: AgentConfig, holder: number | undefined): Promise<DeviceRegistry> {
  const reg = new DeviceRegistry();
  const sim = config.devices.simulated;
  for (const d of sim?.devices ?? []) {
    const dev = await SimDevice.open({
      dir: sim!.dir, name: d.name, stateSize: d.stateSize, flags: d.flags, dirtyRate: d.dirtyRate,
      ...(d.pageSize ? { pageSize: d.pageSize } : {}), ...(holder ? { holder } : {}),
    });
    reg.add('simulated', dev, d.flags);
  }
  return reg;
}

export function describeFlags(flags: number): string[] {
  return flagNames(flags);
}
