/**
 * Where a benchmark keeps its simulated devices: tmpfs when the machine has one. A device's state
 * lives in device memory, not on a disk; on a disk the simulator's writeback (ext4 flushes a file's
 * data when a rename replaces another, as the simulated commit does) would stand in for the relay's
 * speed and the device's downtime.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { tmpdir } from 'node:os';

export async function stateRoot(): Promise<string> {
  const shm = '/dev/shm';
  return (await access(shm, constants.W_OK).then(() => true, () => false)) ? shm : tmpdir();
}
