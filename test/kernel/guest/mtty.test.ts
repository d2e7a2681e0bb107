/**
 * The kernel backend against Linux's own VFIO migration driver, mtty, inside the guest: the same
 * KernelDevice (koffi ioctls) a node uses, on each access path this kernel has (the Debian kernel:
 * container/group; the cdev kernel: iommufd cdev and container/group). What the kernel answers here
 * is the authority the C double (test/cdouble) is held to.
 */
import { closeSync, readSync } from 'node:fs';
import koffi from 'koffi';
import { DeviceError, type SaveStream } from '../../../src/vfio/device.js';
import { PlanRefused, planArcs } from '../../../src/vfio/planner.js';
import { Ioctl, MigFlag, MigState, STATE_NAMES, encodeMigState, type MigStateName } from '../../../src/vfio/uapi.js';
import { readScratch, writeScratch } from '../../../src/local/guest/mtty.js';
import type { KernelDevice } from '../../../src/vfio/kernel.js';
import { arcList, cleanup, mdev, open, paths, readAll, readUntilPause, resume, save } from './helpers.js';

const libc = koffi.load('libc.so.6');
const ioctl = libc.func('int ioctl(int fd, unsigned long request, ...)') as (fd: number, req: number, ...a: unknown[]) => number;
const dup = libc.func('int dup(int fd)') as (fd: number) => number;
const ALL = MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY;

afterEach(cleanup);

/** A raw SET through libc, bypassing the planner and KernelDevice: [ret, errno]. */
function rawSet(d: KernelDevice, state: number): [number, number] {
  const buf = encodeMigState(state);
  const ret = ioctl(d.fd, Ioctl.VFIO_DEVICE_FEATURE, 'void *', buf);
  return [ret, ret < 0 ? koffi.errno() : 0];
}

describe.each(paths)('mtty through the %s path', (via) => {
  it('probe: STOP_COPY|P2P|PRE_COPY, RUNNING, and a stop-copy size of 96 bytes for two ports', async () => {
    const d = await open(await mdev('mtty-2'), via);
    expect(await d.probe()).toBe(ALL);
    expect(await d.getState()).toBe('RUNNING');
    expect(await d.stopCopySize()).toBe(96n);
    const one = await open(await mdev('mtty-1'), via);
    expect(await one.probe()).toBe(ALL);
    expect(await one.stopCopySize()).toBeLessThan(96n); // one port's state fewer
  });

  it('every arc the planner emits is accepted singly, and every (from, to) pair lands where the planner says', async () => {
    const d = await open(await mdev(), via);
    await d.probe();
    const own = await save(d); // the device's own stream: a valid RESUMING payload for it
    expect((await d.setState('RUNNING')).error).toBeUndefined();
    const seen = new Set<string>();
    const wanted = new Set<string>();
    const go = async (to: MigStateName) => {
      const r = await d.setState(to);
      expect({ to, error: r.error?.message }).toEqual({ to, error: undefined });
      expect(r.state).toBe(to);
      expect(await d.getState()).toBe(to); // the kernel says so too
      for (const a of r.arcs) seen.add(`${a.from}>${a.to}`);
      if (r.stream?.kind === 'resume') await r.stream.write(own);
      return r;
    };
    for (const from of STATE_NAMES) {
      for (const to of STATE_NAMES) {
        let plan;
        try {
          plan = planArcs(from, to, ALL);
        } catch (e) {
          if (!(e instanceof PlanRefused)) throw e;
          plan = null;
        }
        for (const a of plan ?? []) wanted.add(`${a.from}>${a.to}`);
        if (from === 'ERROR') continue; // the kernel enters ERROR only on a driver's failure
        await go('RUNNING'); // every state is reachable from RUNNING (STOP_COPY blocks the way to PRE_COPY)
        await go(from);
        if (plan === null) {
          // Refused by the planner with the kernel's errno; nothing reaches the device.
          const r = await d.setState(to);
          expect({ from, to, arcs: r.arcs, errno: r.error?.errno, state: r.state }).toEqual({ from, to, arcs: [], errno: 'EINVAL', state: from });
          expect(await d.getState()).toBe(from);
          continue;
        }
        const r = await go(to);
        expect({ from, to, arcs: r.arcs.map((a) => ({ from: a.from, to: a.to })) }).toEqual({ from, to, arcs: plan });
        expect(r.arcs.every((a) => a.result === 'Succeeded')).toBe(true);
      }
    }
    await go('RUNNING');
    expect([...wanted].filter((a) => !seen.has(a))).toEqual([]);
    expect(wanted.size).toBe(15); // every arc a STOP_COPY|P2P|PRE_COPY driver implements
  });

  it('PRE_COPY: PRECOPY_INFO, the temporary end, and STOP_COPY going on on the PRE_COPY data_fd', async () => {
    const d = await open(await mdev(), via);
    const pre = await d.setState('PRE_COPY');
    expect(arcList(pre)).toBe('RUNNING>PRE_COPY');
    const stream = pre.stream as SaveStream & { fd: number };
    expect(await d.precopyInfo()).toEqual({ initialBytes: 24n, dirtyBytes: 0n });
    // What the kernel itself answers at the temporary end: 0, like an end of file (not ENOMSG).
    const probeFd = dup(stream.fd);
    const initial = await readUntilPause(stream);
    expect([initial.data.length, initial.end]).toEqual([24, 'ENOMSG']); // our stream: a pause, not the end
    expect(readSync(probeFd, Buffer.alloc(64), 0, 64, null)).toBe(0);
    expect(await d.precopyInfo()).toEqual({ initialBytes: 0n, dirtyBytes: 0n });
    const p2p = await d.setState('PRE_COPY_P2P');
    expect([arcList(p2p), p2p.stream]).toEqual(['PRE_COPY>PRE_COPY_P2P', undefined]);
    const stop = await d.setState('STOP_COPY');
    expect([arcList(stop), stop.stream]).toEqual(['PRE_COPY_P2P>STOP_COPY', undefined]); // data_fd -1: the same fd goes on
    await expect(d.precopyInfo()).rejects.toMatchObject({ errno: 'EINVAL' }); // only in the PRE_COPY states
    const rest = await readAll(stream);
    expect(rest.length).toBe(72);
    expect(initial.data.length + rest.length).toBe(96);
    expect((await d.setState('STOP')).error).toBeUndefined();
    // The session is over: the kernel disables the old data_fd.
    expect(() => readSync(probeFd, Buffer.alloc(8), 0, 8, null)).toThrow(expect.objectContaining({ code: 'ENODEV' }) as Error);
    closeSync(probeFd);
  });

  it('save and resume between two mdevs: the scratch registers are equal afterwards', async () => {
    const src = await open(await mdev(), via);
    const dst = await open(await mdev(), via);
    writeScratch(src, Buffer.from('5aa5', 'hex'));
    writeScratch(dst, Buffer.from('0000', 'hex'));
    expect(readScratch(src, 2).toString('hex')).toBe('5aa5');
    const data = await save(src);
    expect(data.length).toBe(96);
    writeScratch(src, Buffer.from('1111', 'hex')); // the source moves on; the stream holds what it was
    expect((await dst.setState('STOP')).error).toBeUndefined();
    const { r, writeError } = await resume(dst, data);
    expect([arcList(r), writeError]).toEqual(['STOP>RESUMING', undefined]);
    const run = await dst.setState('RUNNING');
    expect(arcList(run)).toBe('RESUMING>STOP,STOP>RUNNING_P2P,RUNNING_P2P>RUNNING');
    expect(readScratch(dst, 2).toString('hex')).toBe('5aa5');
  });

  it('a corrupt stream: write EFAULT, RESUMING -> STOP EINVAL with the device still RESUMING; reset brings RUNNING', async () => {
    const d = await open(await mdev(), via);
    await d.setState('STOP');
    const { writeError } = await resume(d, Buffer.alloc(64, 0xee));
    expect(writeError).toBeInstanceOf(DeviceError);
    expect(writeError).toMatchObject({ errno: 'EFAULT' });
    const commit = await d.setState('STOP');
    expect(commit).toMatchObject({ state: 'RESUMING', error: { errno: 'EINVAL' } });
    expect(commit.arcs).toEqual([expect.objectContaining({ from: 'RESUMING', to: 'STOP', result: 'Failed', errno: 'EINVAL' })]);
    const run = await d.setState('RUNNING');
    expect([arcList(run), run.state]).toEqual(['RESUMING>STOP!EINVAL', 'RESUMING']);
    await d.reset();
    expect(await d.getState()).toBe('RUNNING');
    expect((await d.setState('STOP')).error).toBeUndefined();
  });

  it('a truncated stream: the writes pass, RESUMING -> STOP refuses it (EINVAL), the device stays RESUMING', async () => {
    const src = await open(await mdev(), via);
    const dst = await open(await mdev(), via);
    writeScratch(dst, Buffer.from('c3c3', 'hex'));
    const data = await save(src);
    await dst.setState('STOP');
    const { writeError } = await resume(dst, data.subarray(0, 60));
    expect(writeError).toBeUndefined();
    const commit = await dst.setState('STOP');
    expect(commit).toMatchObject({ state: 'RESUMING', error: { errno: 'EINVAL' } });
    await dst.reset();
    expect(await dst.getState()).toBe('RUNNING');
  });

  it('SET of ERROR or of a state past the last is refused (EINVAL), the state unchanged', async () => {
    const d = await open(await mdev(), via);
    await d.probe();
    expect(rawSet(d, MigState.ERROR)).toEqual([-1, 22]);
    expect(rawSet(d, 8)).toEqual([-1, 22]);
    expect(await d.getState()).toBe('RUNNING');
    expect(await d.setState('ERROR')).toMatchObject({ arcs: [], state: 'RUNNING', error: { errno: 'EINVAL' } });
  });

  it('the blocked arc: STOP_COPY -> PRE_COPY(_P2P) is refused by the planner and never reaches the kernel', async () => {
    // On 6.12.95 this SET spins forever inside the ioctl; that this test ends is part of what it shows.
    const d = await open(await mdev(), via);
    const r = await d.setState('STOP_COPY');
    expect(r.error).toBeUndefined();
    for (const to of ['PRE_COPY', 'PRE_COPY_P2P'] as const) {
      expect(await d.setState(to)).toMatchObject({ arcs: [], state: 'STOP_COPY', error: { errno: 'EINVAL' } });
      await expect(d.step({ from: 'STOP_COPY', to })).rejects.toMatchObject({ errno: 'EINVAL', message: expect.stringMatching(/not sent/) as unknown });
    }
    expect(await d.getState()).toBe('STOP_COPY');
    expect((await readAll(r.stream as SaveStream)).length).toBe(96);
  });
});
