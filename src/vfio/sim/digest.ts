/** The SHA-256 of a simulated device's state, read from disk without opening (or resetting) it. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { DeviceError } from '../device.js';
import type { MigStateName } from '../uapi.js';
import { simDeviceDir } from './device.js';

export interface SimDigest {
  readonly device: string;
  readonly sha256: string;
  readonly bytes: number;
  readonly state: MigStateName;
  readonly generation: number;
}

export async function simDigest(dir: string, name: string): Promise<SimDigest> {
  const home = simDeviceDir(dir, name);
  let meta: { state: MigStateName; stateSize: number; generation: number };
  try {
    meta = JSON.parse(await readFile(join(home, 'device.json'), 'utf8')) as typeof meta;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new DeviceError('ENOENT', `no simulated device "${name}" under ${dir} (expected ${home}/device.json)`, name);
    }
    throw e;
  }
  const hash = createHash('sha256');
  await pipeline(createReadStream(join(home, 'state.bin'), { highWaterMark: 1 << 20 }), hash);
  return { device: name, sha256: hash.digest('hex'), bytes: meta.stateSize, state: meta.state, generation: meta.generation };
}
