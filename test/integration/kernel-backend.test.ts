/**
 * The kernel backend through a C double of the kernel's VFIO ioctl interface (built with gcc, loaded
 * by koffi in place of libc), with real pipe fds as data_fd. No mocks.
 */
import koffi from 'koffi';
import type { ResumeStream, SaveStream } from '../../src/vfio/device.js';
import { openKernelDevice, type KernelDevice } from '../../src/vfio/kernel.js';
import { planArcs } from '../../src/vfio/planner.js';
import { MigFlag, STATE_NAMES } from '../../src/vfio/uapi.js';
import { buildDouble } from '../helpers/cbuild.js';

let libc: string;
let digestOf: (fd: number) => number;
// jest gives tests a copy of process.env; the double reads the real environment, so set it in C.
const cEnv = koffi.load('libc.so.6');
const setenv = cEnv.func('int setenv(const char *name, const char *value, int overwrite)') as (k: string, v: string, o: number) => number;
const unsetenv = cEnv.func('int unsetenv(const char *name)') as (k: string) => number;
const opened: KernelDevice[] = [];
const ENV = ['VFIO_DOUBLE_FLAGS', 'VFIO_DOUBLE_SIZE', 'VFIO_DOUBLE_SEED', 'VFIO_DOUBLE_NOMIG', 'VFIO_DOUBLE_NOT_VIABLE', 'VFIO_DOUBLE_FAIL_ARC', 'VFIO_DOUBLE_RESUME_ERROR'];

beforeAll(async () => {
  libc = await buildDouble();
  digestOf = koffi.load(libc).func('uint32_t vfio_double_digest(int fd)') as (fd: number) => number;
});
afterEach(async () => {
  for (const d of opened.splice(0)) await d.close();
  for (const k of ENV) unsetenv(k);
});

async function dev(env: Record<string, string> = {}, spec: Parameters<typeof openKernelDevice>[0] = { cdev: '/dev/vfio/devices/vfio0' }) {
  for (const [k, v] of Object.entries(env)) setenv(k, v, 1);
  const d = await openKernelDevice(spec, { libc });
  opened.push(d);
  return d;
}
const fdOf = (d: KernelDevice) => (d as unknown as { fd: number }).fd;

async function readAll(s: SaveStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = Buffer.alloc(1 << 16);
    const n = await s.read(b);
    if (n === 'ENOMSG') throw new Error('ENOMSG in STOP_COPY');
    if (n === 0) return Buffer.concat(parts);
    parts.push(b.subarray(0, n));
  }
}

describe('kernel backend through the C double', () => {
  it('probes flags by both open paths', async () => {
    expect(await (await dev({ VFIO_DOUBLE_FLAGS: '3' })).probe()).toBe(MigFlag.STOP_COPY | MigFlag.P2P);
    const g = await dev({ VFIO_DOUBLE_FLAGS: '1' }, { group: '/dev/vfio/12', bdf: '0000:3b:00.1' });
    expect(await g.probe()).toBe(MigFlag.STOP_COPY);
    expect(await g.getState()).toBe('RUNNING');
  });

  it('refuses a group that is not viable, with the fix', async () => {
    await expect(dev({ VFIO_DOUBLE_NOT_VIABLE: '1' }, { group: '/dev/vfio/12', bdf: '0000:3b:00.1' }))
      .rejects.toThrow(/not viable: every device in the IOMMU group must be bound to a vfio driver/);
  });

  it('maps ENOTTY to "no migration support"', async () => {
    const d = await dev({ VFIO_DOUBLE_NOMIG: '1' });
    await expect(d.probe()).rejects.toMatchObject({ errno: 'ENOTTY', message: expect.stringMatching(/no migration support/) as unknown });
  });

  it.each([
    ['STOP_COPY', MigFlag.STOP_COPY],
    ['STOP_COPY+P2P', MigFlag.STOP_COPY | MigFlag.P2P],
    ['STOP_COPY+PRE_COPY', MigFlag.STOP_COPY | MigFlag.PRE_COPY],
    ['all', MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY],
  ])('walks every planned arc for %s, each one SET the double accepts', async (_l, flags) => {
    const d = await dev({ VFIO_DOUBLE_FLAGS: String(flags) });
    // RESUMING is left only by a commit of valid data: the transfer test below covers it.
    const reachable = STATE_NAMES.filter((s) => s !== 'ERROR' && s !== 'RESUMING' && (() => { try { planArcs('RUNNING', s, flags); return true; } catch { return false; } })());
    let arcs = 0;
    for (const to of reachable) {
      for (const back of ['RUNNING', to] as const) {
        const from = await d.getState();
        if (from === 'STOP_COPY' && back.startsWith('PRE_COPY')) continue; // refused by the planner
        const r = await d.setState(back === 'RUNNING' ? to : 'RUNNING');
        if (r.error) throw r.error;
        arcs += r.arcs.length;
        for (const a of r.arcs) expect(a.result).toBe('Succeeded');
        await r.stream?.close();
      }
    }
    expect(arcs).toBeGreaterThan(reachable.length);
    expect(await d.getState()).toBe('RUNNING');
  });

  it('moves state exactly: STOP_COPY read to EOF, RESUMING written, RESUMING -> STOP commits', async () => {
    const src = await dev({ VFIO_DOUBLE_SIZE: '300000', VFIO_DOUBLE_SEED: '7' });
    const dst = await dev({ VFIO_DOUBLE_SIZE: '300000', VFIO_DOUBLE_SEED: '9' });
    expect(digestOf(fdOf(dst))).not.toBe(digestOf(fdOf(src)));
    const save = await src.setState('STOP_COPY');
    expect(save.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY']);
    const data = await readAll(save.stream as SaveStream);
    expect(data.length).toBe(300000 + 16);
    expect(await src.stopCopySize()).toBe(300016n);
    const res = await dst.setState('RESUMING');
    await (res.stream as ResumeStream).write(data);
    const commit = await dst.setState('RUNNING');
    expect(commit.error).toBeUndefined();
    expect(commit.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RESUMING>STOP', 'STOP>RUNNING_P2P', 'RUNNING_P2P>RUNNING']);
    expect(digestOf(fdOf(dst))).toBe(digestOf(fdOf(src)));
  });

  it.each([
    ['short', (d: Buffer) => d.subarray(0, d.length - 3)],
    ['long', (d: Buffer) => Buffer.concat([d, Buffer.from('x')])],
    ['corrupt', (d: Buffer) => { const c = Buffer.from(d); c[100] = (c[100] ?? 0) ^ 0xff; return c; }],
  ])('RESUMING -> STOP fails EINVAL on a %s stream, into ERROR when configured; only reset leaves ERROR', async (_k, mangle) => {
    const src = await dev();
    const dst = await dev({ VFIO_DOUBLE_SEED: '3', VFIO_DOUBLE_RESUME_ERROR: '1' });
    const before = digestOf(fdOf(dst));
    const data = mangle(await readAll((await src.setState('STOP_COPY')).stream as SaveStream));
    await ((await dst.setState('RESUMING')).stream as ResumeStream).write(data);
    const r = await dst.setState('STOP');
    expect(r.error?.errno).toBe('EINVAL');
    expect(r.arcs.at(-1)).toMatchObject({ from: 'RESUMING', to: 'STOP', result: 'Failed', errno: 'EINVAL' });
    expect(r.state).toBe('ERROR');
    expect(digestOf(fdOf(dst))).toBe(before);
    const stuck = await dst.setState('RUNNING');
    expect(stuck.error?.message).toMatch(/VFIO_DEVICE_RESET/);
    await dst.reset();
    expect(await dst.getState()).toBe('RUNNING');
  });

  it('an arc failing with EIO is recorded with its errno and the state read back', async () => {
    const d = await dev({ VFIO_DOUBLE_FLAGS: '1', VFIO_DOUBLE_FAIL_ARC: 'STOP>STOP_COPY:5' });
    const r = await d.setState('STOP_COPY');
    expect(r.arcs.map((a) => [a.from, a.to, a.result, a.errno])).toEqual([['RUNNING', 'STOP', 'Succeeded', undefined], ['STOP', 'STOP_COPY', 'Failed', 'EIO']]);
    expect(r.state).toBe('STOP');
  });

  it('a device left in ERROR by a failed arc', async () => {
    const d = await dev({ VFIO_DOUBLE_FLAGS: '1', VFIO_DOUBLE_FAIL_ARC: 'RUNNING>STOP:5:ERROR' });
    const r = await d.setState('STOP');
    expect(r.state).toBe('ERROR');
    expect((await d.setState('RUNNING')).error?.errno).toBe('EINVAL');
    await d.reset();
    expect(await d.getState()).toBe('RUNNING');
  });

  it('PRE_COPY: the data_fd answers precopy info, then continues into STOP_COPY', async () => {
    const d = await dev({ VFIO_DOUBLE_SIZE: '4096' });
    const r = await d.setState('PRE_COPY');
    expect(r.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>PRE_COPY']);
    expect(await d.precopyInfo()).toEqual({ initialBytes: 4112n, dirtyBytes: 0n });
    const stop = await d.setState('STOP_COPY');
    expect(stop.stream).toBeUndefined();
    expect((await readAll(r.stream as SaveStream)).length).toBe(4096 + 16);
  });
});

describe('devmig device probe on a kernel path', () => {
  it('prints flags, state and the stop-copy estimate; ENOTTY gets a clear message', async () => {
    const { runCli, lastJson } = await import('../helpers/cli.js');
    const ok = await runCli(['device', 'probe', '/dev/vfio/devices/vfio0', '--libc', libc, '-o', 'json']);
    expect(ok.code).toBe(0);
    expect(lastJson(ok.stdout)).toEqual({ device: '/dev/vfio/devices/vfio0', flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING', stopCopyBytes: 65552 });
    setenv('VFIO_DOUBLE_NOMIG', '1', 1);
    const no = await runCli(['device', 'probe', '/dev/vfio/12', '--bdf', '0000:3b:00.1', '--libc', libc]);
    expect(no.code).toBe(1);
    expect(no.stderr).toMatch(/0000:3b:00.1 has no migration support .*\(ENOTTY\)/);
  });
});
