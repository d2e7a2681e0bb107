/**
 * The fd holder keeps a device open across an agent's death: fds handed over with pidfd_getfd(2)
 * between real processes. A file stands in for the device: the same open file, after its first
 * holder was SIGKILLed, still reads what was written through it.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFds, takeFds } from '../../src/agent/fdpass.js';
import { ensureHolder, handOver, readHeld } from '../../src/agent/holder.js';
import { devmigBin } from '../helpers/cli.js';

let dir: string;
beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'devmig-fdpass-')); });
afterAll(async () => {
  const pid = Number(await readFile(join(dir, 'state', 'holder.pid'), 'utf8').catch(() => '0'));
  if (pid > 0) process.kill(pid, 'SIGTERM');
  await rm(dir, { recursive: true, force: true });
});

const readAll = (fd: number) => {
  const b = Buffer.alloc(256);
  return b.subarray(0, readSync(fd, b, 0, b.length, 0)).toString();
};

it('takes a copy of another process\'s fd, which outlives that process', async () => {
  const file = join(dir, 'device-a');
  const child = spawn(process.execPath, ['-e', `const fs=require('fs');const fd=fs.openSync(${JSON.stringify(file)},'w+');fs.writeSync(fd,'state of a');console.log(fd);setInterval(()=>{},1000)`],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  const fd = await new Promise<number>((r) => child.stdout.once('data', (d: Buffer) => r(Number(d.toString().trim()))));
  const [mine] = takeFds(child.pid!, [fd]);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  expect(readAll(mine!)).toBe('state of a');
  closeFds([mine!]);
  expect(() => takeFds(child.pid!, [fd])).toThrow(/pidfd_open|ESRCH/);
});

it('the holder keeps what the agent handed over; a restarted agent takes it back', async () => {
  const stateDir = join(dir, 'state');
  const holder = await ensureHolder(stateDir, devmigBin);
  const fd = openSync(join(dir, 'device-b'), 'w+');
  writeSync(fd, 'state of b');
  await handOver(stateDir, holder, { 'pci-0000-3b-00-1': [fd] });
  closeSync(fd); // the "agent" lets go: only the holder keeps the file open now
  const held = await readHeld(stateDir, holder);
  expect(Object.keys(held)).toEqual(['pci-0000-3b-00-1']);
  const [back] = takeFds(holder, held['pci-0000-3b-00-1']!);
  expect(readAll(back!)).toBe('state of b');
  closeFds([back!]);
  expect(await ensureHolder(stateDir, devmigBin)).toBe(holder); // found again, not started twice
});
