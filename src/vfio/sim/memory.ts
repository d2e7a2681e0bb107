/**
 * Where simulated devices keep their state: tmpfs when the machine has one. A device's state lives in
 * device memory, not on a disk. On a disk the simulator's writeback would stand in for the device:
 * ext4 flushes a file's data when a rename replaces another (as the simulated commit does), and in
 * ordered mode every fsync on that disk (the agents' journals, etcd's log) waits for the simulator's
 * dirty pages too.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { tmpdir } from 'node:os';

export async function deviceMemoryRoot(): Promise<string> {
  const shm = '/dev/shm';
  return (await access(shm, constants.W_OK).then(() => true, () => false)) ? shm : tmpdir();
}
