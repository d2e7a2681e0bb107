/**
 * The kernel backend (KernelDevice, datafd) against the C double of the kernel's VFIO ioctl interface
 * (test/cdouble/vfio_double.c): built with gcc, loaded by koffi in place of libc, handing out real
 * pipe fds as data_fd. No mocks. One scenario runs in a child process with the double LD_PRELOADed,
 * so that PRE_COPY's ENOMSG reaches Node's own read() as it would from the kernel.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import koffi from 'koffi';
import { DeviceError, type ResumeStream, type SaveStream, type SetStateResult } from '../../src/vfio/device.js';
import { openKernelDevice, type KernelDevice, type KernelDeviceSpec } from '../../src/vfio/kernel.js';
import { PlanRefused, planArcs, planPath } from '../../src/vfio/planner.js';
import { Feature, FEATURE_PAYLOAD, Ioctl, MigFlag, MigState, STATE_NAMES, encodeMigState, featureBuffer, type MigStateName } from '../../src/vfio/uapi.js';
import { buildDouble } from '../helpers/cbuild.js';
import { lastJson, repoRoot, runCli } from '../helpers/cli.js';

interface Double {
  configure(settings: string): number;
  deviceConfigure(fd: number, settings: string): number;
  digest(fd: number): number;
  arcs(fd: number): string;
  next(flags: number, from: number, to: number): number;
  fakeFds(): number;
  badCloses(): number;
  ioctl(fd: number, request: number, ...args: unknown[]): number;
}

let so: string;
let dbl: Double;
const opened: KernelDevice[] = [];
const CDEV = { cdev: '/dev/vfio/devices/vfio0' } as const;
const GROUP = { group: '/dev/vfio/12', device: '0000:3b:00.1' } as const;
const { STOP_COPY, P2P, PRE_COPY } = MigFlag;
const FLAG_SETS = [STOP_COPY, STOP_COPY | P2P, STOP_COPY | PRE_COPY, STOP_COPY | P2P | PRE_COPY];
/** The double's stream: 16-byte header, a 16-byte record header before the state, a 16-byte end. */
const overhead = 48;

/**
 * The double also reads VFIO_DOUBLE_CONFIG and VFIO_DOUBLE_<KEY> from the real environment (C's, which
 * jest's process.env copy does not reach); other test files in this worker may have set them.
 */
const DOUBLE_ENV = ['CONFIG', 'FLAGS', 'NOMIG', 'SIZE', 'SEED', 'DIRTY', 'FAIL', 'RESUME_ERROR', 'NOT_VIABLE', 'ROOT', 'PRECOPY_ENOMSG'].map((k) => `VFIO_DOUBLE_${k}`);
const unsetenv = koffi.load('libc.so.6').func('int unsetenv(const char *name)') as (name: string) => number;

beforeAll(async () => {
  for (const name of DOUBLE_ENV) unsetenv(name);
  so = await buildDouble();
  const lib = koffi.load(so);
  dbl = {
    configure: lib.func('int vfio_double_configure(const char *s)') as Double['configure'],
    deviceConfigure: lib.func('int vfio_double_device_configure(int fd, const char *s)') as Double['deviceConfigure'],
    digest: lib.func('uint32_t vfio_double_state_digest(int fd)') as Double['digest'],
    arcs: lib.func('const char *vfio_double_arcs(int fd)') as Double['arcs'],
    next: lib.func('int vfio_double_next_state(unsigned int flags, int from, int to)') as Double['next'],
    fakeFds: lib.func('int vfio_double_fake_fds(void)') as Double['fakeFds'],
    badCloses: lib.func('int vfio_double_bad_closes(void)') as Double['badCloses'],
    ioctl: lib.func('int ioctl(int fd, unsigned long request, ...)') as Double['ioctl'],
  };
});

afterEach(async () => {
  for (const d of opened.splice(0)) await d.close();
  dbl.configure('reset');
  expect(dbl.fakeFds()).toBe(0); // every open path closed what it opened...
  expect(dbl.badCloses()).toBe(0); // ...exactly once
});

/** Opens a device of the double with `settings` for what opens now ("flags=3 size=4096"). */
async function open(settings = '', spec: KernelDeviceSpec = CDEV): Promise<KernelDevice> {
  expect(dbl.configure(`reset ${settings}`)).toBe(0);
  const d = await openKernelDevice(spec, { libc: so });
  opened.push(d);
  return d;
}

const arcList = (r: SetStateResult) => r.arcs.map((a) => `${a.from}>${a.to}${a.errno ? `!${a.errno}` : ''}`).join(',');

async function readAll(s: SaveStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = Buffer.alloc(1 << 16);
    const n = await s.read(b);
    if (n === 'ENOMSG') throw new Error('ENOMSG after STOP_COPY');
    if (n === 0) return Buffer.concat(parts);
    parts.push(b.subarray(0, n));
  }
}

/** Reads exactly `count` bytes (a loaded, not preloaded, double cannot say ENOMSG: reading past the
 * data PRE_COPY has would wait for more). */
async function readExactly(s: SaveStream, count: number): Promise<Buffer> {
  const out = Buffer.alloc(count);
  for (let at = 0; at < count;) {
    const n = await s.read(out.subarray(at));
    if (n === 'ENOMSG' || n === 0) throw new Error(`stream paused at ${at} of ${count} bytes`);
    at += n;
  }
  return out;
}

/** A whole STOP_COPY stream of `d`, which is left in STOP. */
async function saveAll(d: KernelDevice): Promise<Buffer> {
  const r = await d.setState('STOP_COPY');
  expect(r.error).toBeUndefined();
  const data = await readAll(r.stream as SaveStream);
  expect((await d.setState('STOP')).error).toBeUndefined();
  return data;
}

async function resumeWith(d: KernelDevice, data: Buffer): Promise<SetStateResult> {
  const r = await d.setState('RESUMING');
  expect(r.error).toBeUndefined();
  await (r.stream as ResumeStream).write(data);
  return d.setState('STOP');
}

/** A raw SET through the double's ioctl, bypassing KernelDevice: [ret, errno, data_fd]. */
function rawSet(fd: number, state: MigStateName): [number, number, number] {
  const buf = encodeMigState(MigState[state]);
  const ret = dbl.ioctl(fd, Ioctl.VFIO_DEVICE_FEATURE, 'void *', buf);
  return [ret, ret < 0 ? koffi.errno() : 0, buf.readInt32LE(FEATURE_PAYLOAD + 4)];
}

describe('opening a device', () => {
  it.each(FLAG_SETS)('cdev + iommufd (BIND_IOMMUFD): probe reports flags %i, the device is RUNNING', async (flags) => {
    const d = await open(`flags=${flags}`);
    expect(d.name).toBe('/dev/vfio/devices/vfio0');
    expect(await d.probe()).toBe(flags);
    expect(await d.getState()).toBe('RUNNING');
    expect(dbl.fakeFds()).toBe(2); // device + iommufd
  });

  it('group/container: API version, viable group, TYPE1v2, GET_DEVICE_FD by PCI address', async () => {
    const d = await open('flags=STOP_COPY+P2P', GROUP);
    expect(d.name).toBe('0000:3b:00.1');
    expect(await d.probe()).toBe(STOP_COPY | P2P);
    expect(await d.getState()).toBe('RUNNING');
    expect(dbl.fakeFds()).toBe(3); // container, group, device
    await d.close();
    await d.close(); // idempotent
    expect(dbl.fakeFds()).toBe(0);
    await expect(d.getState()).rejects.toThrow(/closed/);
  });

  it('refuses a group that is not viable, says how to fix it, and leaks nothing', async () => {
    const e = await open('not_viable=1', GROUP).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DeviceError);
    expect(e).toMatchObject({ errno: 'EBUSY', message: expect.stringMatching(/not viable: every device in the IOMMU group must be bound to a vfio driver/) as unknown });
    expect(dbl.fakeFds()).toBe(0);
  });

  it('a device the group does not have, and an iommufd that is not one, fail with the kernel\'s errno', async () => {
    await expect(open('', { group: '/dev/vfio/12', device: 'not-a-bdf' })).rejects.toMatchObject({ errno: 'ENODEV' });
    await expect(open('', { cdev: '/dev/vfio/devices/vfio0', iommu: '/dev/null' })).rejects.toMatchObject({ errno: 'EBADFD' });
    expect(dbl.fakeFds()).toBe(0);
  });

  it('paths are configurable: the double fakes a /dev under another root', async () => {
    const root = mkdtempSync(join(tmpdir(), 'devmig-vfio-'));
    try {
      const d = await open(`root=${root}`, { cdev: `${root}/dev/vfio/devices/vfio7`, iommu: `${root}/dev/iommu` });
      expect(await d.getState()).toBe('RUNNING');
      const g = await openKernelDevice({ group: `${root}/dev/vfio/3`, device: '0000:af:00.0', container: `${root}/dev/vfio/vfio` }, { libc: so });
      opened.push(g);
      expect(await g.probe()).toBe(STOP_COPY | P2P | PRE_COPY);
      // With a root set, the real /dev is the real libc's again.
      if (!existsSync('/dev/vfio/devices/vfio0')) {
        await expect(openKernelDevice(CDEV, { libc: so })).rejects.toMatchObject({ errno: 'ENOENT' });
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('probe, sizes and errno mapping', () => {
  it('ENOTTY from a device without migration support says so', async () => {
    const d = await open('nomig=1');
    await expect(d.probe()).rejects.toMatchObject({
      errno: 'ENOTTY', message: '/dev/vfio/devices/vfio0 has no migration support (its driver does not implement VFIO_DEVICE_FEATURE_MIGRATION)',
    });
    await expect(d.stopCopySize()).rejects.toMatchObject({ errno: 'ENOTTY', message: expect.stringMatching(/MIG_DATA_SIZE failed: the device has no migration support/) as unknown });
    await expect(d.setState('STOP')).rejects.toMatchObject({ errno: 'ENOTTY' });
  });

  it('MIG_DATA_SIZE is the stop-copy estimate, in any state', async () => {
    const d = await open('size=100000');
    expect(await d.stopCopySize()).toBe(BigInt(100000 + overhead));
    await d.setState('STOP');
    expect(await d.stopCopySize()).toBe(BigInt(100000 + overhead));
  });

  it('the double checks arguments as the kernel does (argsz, flags, unknown features, PROBE)', async () => {
    const d = await open();
    const call = (flags: number, payload: number, argsz?: number) => {
      const buf = featureBuffer(flags, payload);
      if (argsz !== undefined) buf.writeUInt32LE(argsz, 0);
      return dbl.ioctl(d.fd, Ioctl.VFIO_DEVICE_FEATURE, 'void *', buf) < 0 ? koffi.errno() : 0;
    };
    const { EINVAL, ENOTTY } = { EINVAL: 22, ENOTTY: 25 };
    expect(call(Feature.GET | Feature.MIGRATION, 8, 4)).toBe(EINVAL); // argsz below the header
    expect(call(Feature.GET | Feature.MIGRATION, 8, 12)).toBe(EINVAL); // payload below its struct
    expect(call(Feature.GET | Feature.SET | Feature.MIG_DEVICE_STATE, 8)).toBe(EINVAL); // GET and SET
    expect(call(Feature.SET | Feature.MIGRATION, 8)).toBe(EINVAL); // MIGRATION is GET-only
    expect(call(Feature.GET | Feature.MIGRATION | (1 << 20), 8)).toBe(EINVAL); // unknown flag bit
    expect(call(Feature.GET | 200, 8)).toBe(ENOTTY); // a feature the vfio-pci driver lacks
    expect(call(Feature.PROBE | Feature.GET | Feature.SET | Feature.MIG_DEVICE_STATE, 0)).toBe(0);
    expect(dbl.ioctl(d.fd, Ioctl.VFIO_DEVICE_GET_INFO, 'void *', Buffer.alloc(32)) < 0 ? koffi.errno() : 0).toBe(ENOTTY);
  });
});

describe('the FSM', () => {
  const value = (s: MigStateName) => MigState[s];

  it.each([0, 1, 2, 3, 4, 5, 6, 7])('the double\'s own transcription of the kernel table walks as the planner does (flags %i)', (flags) => {
    for (const from of STATE_NAMES) {
      for (const to of STATE_NAMES) {
        let planned: MigStateName[] | null;
        try {
          planned = planPath(from, to, flags);
        } catch (e) {
          if (!(e instanceof PlanRefused)) throw e;
          planned = null;
        }
        const walked: MigStateName[] = [from];
        let refused = false;
        for (let cur = from; cur !== to || walked.length === 1;) {
          const next = dbl.next(flags, value(cur), value(to));
          if (next < 0) { refused = true; break; }
          cur = STATE_NAMES[next]!;
          walked.push(cur);
          if (cur === to) break;
        }
        // The kernel validates both ends even for from === to; the walk then has no arcs.
        const path = refused ? null : from === to ? [from] : walked;
        expect({ from, to, flags, path }).toEqual({ from, to, flags, path: planned });
      }
    }
  });

  it.each(FLAG_SETS)('every arc the planner can produce is accepted, one SET per arc (flags %i)', async (flags) => {
    const d = await open(`flags=${flags} size=3000`);
    await d.probe();
    const own = await saveAll(d); // the device's own stream: a valid RESUMING payload for it
    await d.setState('RUNNING');
    dbl.arcs(d.fd);
    const wanted = new Set<string>();
    for (const from of STATE_NAMES) for (const to of STATE_NAMES) {
      try { for (const a of planArcs(from, to, flags)) wanted.add(`${a.from}>${a.to}`); } catch { /* refused */ }
    }
    const seen = new Set<string>();
    const go = async (to: MigStateName) => {
      const r = await d.setState(to);
      expect(r.error).toBeUndefined();
      expect(r.state).toBe(to);
      expect(await d.getState()).toBe(to);
      expect(dbl.arcs(d.fd)).toBe(arcList(r)); // what we recorded is what the device did
      for (const a of r.arcs) {
        expect(a).toMatchObject({ result: 'Succeeded', durationMs: expect.any(Number) as unknown });
        expect(new Date(a.startedAt).toISOString()).toBe(a.startedAt);
        seen.add(`${a.from}>${a.to}`);
      }
      if (r.stream?.kind === 'resume') await r.stream.write(own);
    };
    for (const arc of [...wanted].sort()) {
      const [from, to] = arc.split('>') as [MigStateName, MigStateName];
      await go(from);
      expect(planArcs(from, to, flags)).toEqual([{ from, to }]); // a driver arc is its own plan
      await go(to);
    }
    await go('RUNNING');
    expect([...wanted].filter((a) => !seen.has(a))).toEqual([]);
    expect(wanted.size).toBeGreaterThanOrEqual(flags === 7 ? 15 : 6);
  });

  it('a request the planner refuses is an EINVAL with its reason, and nothing reaches the device', async () => {
    const d = await open('flags=STOP_COPY');
    dbl.arcs(d.fd);
    const r = await d.setState('PRE_COPY');
    expect(r).toMatchObject({ arcs: [], state: 'RUNNING', error: { errno: 'EINVAL', message: expect.stringMatching(/does not support PRE_COPY/) as unknown } });
    const all = await open('flags=7');
    await all.setState('STOP_COPY');
    dbl.arcs(all.fd);
    const stuck = await all.setState('PRE_COPY');
    expect(stuck).toMatchObject({ arcs: [], state: 'STOP_COPY', error: { errno: 'EINVAL' } });
    // Nor can a single step send it, or any SET that is not one arc of the table: refused before the ioctl.
    await expect(all.step({ from: 'STOP_COPY', to: 'PRE_COPY' })).rejects.toMatchObject({ errno: 'EINVAL', message: expect.stringMatching(/not sent: the kernel has no path from STOP_COPY to PRE_COPY/) as unknown });
    await expect(all.step({ from: 'STOP_COPY', to: 'PRE_COPY_P2P' })).rejects.toMatchObject({ errno: 'EINVAL' });
    await expect(all.step({ from: 'STOP_COPY', to: 'RUNNING' })).rejects.toMatchObject({ errno: 'EINVAL', message: expect.stringMatching(/not one arc \(the kernel walks STOP -> RUNNING_P2P -> RUNNING\)/) as unknown });
    expect(await all.getState()).toBe('STOP_COPY');
    expect([dbl.arcs(d.fd), dbl.arcs(all.fd)]).toEqual(['', '']);
    expect(rawSet(all.fd, 'PRE_COPY').slice(0, 2)).toEqual([-1, 22]); // the double refuses it too, and does not hang
  });

  it('like the kernel, the double walks a combination SET itself, and the arcs are the planner\'s', async () => {
    const d = await open('flags=7');
    const [ret, , dataFd] = rawSet(d.fd, 'STOP_COPY');
    expect(ret).toBe(0);
    expect(dataFd).toBeGreaterThanOrEqual(0);
    closeSync(dataFd);
    expect(dbl.arcs(d.fd)).toBe(planArcs('RUNNING', 'STOP_COPY', 7).map((a) => `${a.from}>${a.to}`).join(','));
    expect(await d.getState()).toBe('STOP_COPY');
  });
});

describe('data_fd', () => {
  it('STOP_COPY reads to EOF; RESUMING -> STOP commits it; the target\'s state equals the source\'s', async () => {
    const src = await open('size=300000 seed=7');
    const dst = await open('size=300000 seed=9', GROUP);
    expect(dbl.digest(dst.fd)).not.toBe(dbl.digest(src.fd));
    const save = await src.setState('STOP_COPY');
    expect(arcList(save)).toBe('RUNNING>RUNNING_P2P,RUNNING_P2P>STOP,STOP>STOP_COPY');
    expect(save.stream?.kind).toBe('save');
    const data = await readAll(save.stream as SaveStream);
    expect(BigInt(data.length)).toBe(await src.stopCopySize());
    expect(data.length).toBe(300000 + overhead);
    const res = await dst.setState('RESUMING');
    expect(res.stream?.kind).toBe('resume');
    // Written in pieces that do not follow the reads: the stream's segmentation is not preserved.
    for (let at = 0; at < data.length; at += 70001) await (res.stream as ResumeStream).write(data.subarray(at, at + 70001));
    const commit = await dst.setState('RUNNING');
    expect(commit.error).toBeUndefined();
    expect(arcList(commit)).toBe('RESUMING>STOP,STOP>RUNNING_P2P,RUNNING_P2P>RUNNING');
    expect(dbl.digest(dst.fd)).toBe(dbl.digest(src.fd));
  });

  it.each([
    ['short', (d: Buffer) => d.subarray(0, d.length - 3)],
    ['long', (d: Buffer) => Buffer.concat([d, Buffer.from('x')])],
    ['corrupt', (d: Buffer) => { const c = Buffer.from(d); c[100] = c[100]! ^ 0xff; return c; }],
  ])('RESUMING -> STOP refuses a %s stream with EINVAL; the device stays RESUMING until reset', async (_kind, mangle) => {
    const data = mangle(await saveAll(await open('seed=1')));
    const dst = await open('seed=3');
    const before = dbl.digest(dst.fd);
    const r = await resumeWith(dst, data);
    expect(r.error?.errno).toBe('EINVAL');
    expect(r.arcs.at(-1)).toMatchObject({ from: 'RESUMING', to: 'STOP', result: 'Failed', errno: 'EINVAL', message: expect.any(String) as unknown });
    expect(r.state).toBe('RESUMING');
    expect(dbl.digest(dst.fd)).toBe(before);
    expect((await dst.setState('RUNNING')).error?.errno).toBe('EINVAL'); // aborting RESUMING needs a reset
    await dst.reset();
    expect(await dst.getState()).toBe('RUNNING');
  });

  it('with resume_error=1 a refused commit leaves ERROR, which refuses everything but reset', async () => {
    const data = await saveAll(await open('seed=1'));
    const dst = await open('seed=3 resume_error=1');
    const r = await resumeWith(dst, data.subarray(1));
    expect(r).toMatchObject({ state: 'ERROR', error: { errno: 'EINVAL' } });
    dbl.arcs(dst.fd);
    const stuck = await dst.setState('RUNNING');
    expect(stuck).toMatchObject({ arcs: [], state: 'ERROR', error: { errno: 'EINVAL', message: expect.stringMatching(/VFIO_DEVICE_RESET/) as unknown } });
    expect(rawSet(dst.fd, 'STOP').slice(0, 2)).toEqual([-1, 22]);
    expect(dbl.arcs(dst.fd)).toBe('');
    await dst.reset();
    expect(await dst.getState()).toBe('RUNNING');
    expect((await dst.setState('STOP')).error).toBeUndefined();
  });

  it('PRE_COPY: precopy info tracks initial and dirty bytes; STOP_COPY goes on on the same data_fd', async () => {
    const src = await open('size=4096 dirty=1000 seed=5');
    const dst = await open('size=4096 seed=6');
    const untouched = dbl.digest(src.fd);
    const pre = await src.setState('PRE_COPY');
    expect(arcList(pre)).toBe('RUNNING>PRE_COPY');
    const save = pre.stream as SaveStream;
    expect(await src.precopyInfo()).toEqual({ initialBytes: 4096n + 32n, dirtyBytes: 1000n + 16n });
    const initial = await readExactly(save, 4096 + 32);
    expect(await src.precopyInfo()).toEqual({ initialBytes: 0n, dirtyBytes: 1016n }); // asking queues the dirty bytes
    const dirty = await readExactly(save, 1016);
    expect(await src.precopyInfo()).toEqual({ initialBytes: 0n, dirtyBytes: 0n });
    const stop = await src.setState('STOP_COPY');
    expect(stop.stream).toBeUndefined();
    await expect(src.precopyInfo()).rejects.toMatchObject({ errno: 'EINVAL' }); // only in PRE_COPY states
    const rest = await readAll(save);
    expect(rest.length).toBe(16);
    expect(dbl.digest(src.fd)).not.toBe(untouched); // the running device changed its state meanwhile
    expect((await resumeWith(dst, Buffer.concat([initial, dirty, rest]))).error).toBeUndefined();
    expect(dbl.digest(dst.fd)).toBe(dbl.digest(src.fd));
  });

  // mtty answers 0 at PRE_COPY's temporary end of data, mlx5 ENOMSG (the uAPI's word): either is a
  // pause, not the end, until the device reaches STOP_COPY.
  it.each(['precopy_enomsg=0', 'precopy_enomsg=1'])('PRE_COPY reads pause at the temporary end of data (the double preloaded into Node, %s)', async (end) => {
    // Known flake, under investigation: under heavy load the preloaded child has hung once in CI
    // (a fresh clone, every suite in parallel). It gets 20 s, and one more try, not a 60 s hang.
    const run = () => runPreloaded('test/integration/fixtures/precopy-preloaded.ts', so, `size=4096 dirty=1000 seed=3 ${end}`);
    const out = await run().catch(run);
    expect(out).toEqual({
      info1: { initial: 4128, dirty: 1016 }, initial: [4128, 'ENOMSG'],
      info2: { initial: 0, dirty: 1016 }, dirty: [1016, 'ENOMSG'], info3: { initial: 0, dirty: 0 },
      stopCopyNewStream: false, rest: [16, 'EOF'], total: 5160, commit: 'ok', differedBefore: true, equal: true,
    });
  });

  it('precopy info needs an open save data_fd', async () => {
    const d = await open();
    await expect(d.precopyInfo()).rejects.toMatchObject({ errno: 'EINVAL', message: expect.stringMatching(/needs an open PRE_COPY data_fd/) as unknown });
  });

  it('leaving the saving group ends the stream; the next save arc opens a new one', async () => {
    const d = await open('size=200000');
    const first = (await d.setState('PRE_COPY')).stream as SaveStream;
    const back = await d.setState('STOP');
    expect(arcList(back)).toBe('PRE_COPY>RUNNING,RUNNING>RUNNING_P2P,RUNNING_P2P>STOP');
    await expect(first.read(Buffer.alloc(16))).rejects.toMatchObject({ errno: 'ENODEV' });
    const second = (await d.setState('STOP_COPY')).stream as SaveStream;
    expect(second).not.toBe(first);
    expect((await readAll(second)).length).toBe(200000 + overhead);
  });

  it('reset ends an unread stream and brings the device back RUNNING in its power-on state', async () => {
    const d = await open('size=500000 seed=4');
    const seeded = dbl.digest(d.fd);
    const data = await saveAll(d);
    const r = await resumeWith(d, data); // its own state again: a valid commit
    expect(r.error).toBeUndefined();
    const save = (await d.setState('STOP_COPY')).stream as SaveStream; // 500 KB the pipe cannot hold
    await d.reset();
    expect(await d.getState()).toBe('RUNNING');
    expect(dbl.digest(d.fd)).toBe(seeded);
    await expect(save.read(Buffer.alloc(16))).rejects.toMatchObject({ errno: 'ENODEV' });
  });
});

describe('faults injected on an arc', () => {
  it('EIO on STOP -> STOP_COPY: the arc records errno and message, the state is read back', async () => {
    const d = await open('flags=STOP_COPY fail=STOP>STOP_COPY:EIO');
    const r = await d.setState('STOP_COPY');
    expect(r.arcs.map((a) => [a.from, a.to, a.result, a.errno])).toEqual([
      ['RUNNING', 'STOP', 'Succeeded', undefined], ['STOP', 'STOP_COPY', 'Failed', 'EIO'],
    ]);
    expect(r.arcs[1]!.message).toMatch(/SET STOP -> STOP_COPY failed: the device failed the operation/);
    expect(r).toMatchObject({ state: 'STOP', error: { errno: 'EIO' } });
    expect(r.stream).toBeUndefined();
  });

  it('an arc that fails into ERROR: everything but reset is refused; reset brings RUNNING back', async () => {
    const d = await open('fail=RUNNING_P2P>STOP:EIO:ERROR');
    const r = await d.setState('STOP_COPY');
    expect(arcList(r)).toBe('RUNNING>RUNNING_P2P,RUNNING_P2P>STOP!EIO');
    expect(r.state).toBe('ERROR');
    for (const to of ['RUNNING', 'STOP', 'RESUMING'] as const) {
      expect(await d.setState(to)).toMatchObject({ arcs: [], state: 'ERROR', error: { errno: 'EINVAL' } });
    }
    await d.reset();
    expect(await d.getState()).toBe('RUNNING');
    expect((await d.setState('RUNNING_P2P')).error).toBeUndefined();
  });

  it('a fault set on an open device (ENOSPC on STOP -> RESUMING) and other errnos map by name', async () => {
    const d = await open();
    expect(dbl.deviceConfigure(d.fd, 'fail=STOP>RESUMING:ENOSPC')).toBe(0);
    const r = await d.setState('RESUMING');
    expect(r).toMatchObject({ state: 'STOP', error: { errno: 'ENOSPC', message: expect.stringMatching(/SET STOP -> RESUMING failed with ENOSPC/) as unknown } });
    expect(dbl.deviceConfigure(d.fd, 'fail=')).toBe(0);
    expect((await d.setState('RESUMING')).stream?.kind).toBe('resume');
  });
});

describe('devmig device probe on a kernel path', () => {
  it('prints flags, state and the stop-copy estimate; ENOTTY gets a clear message', async () => {
    dbl.configure('reset');
    const ok = await runCli(['device', 'probe', '/dev/vfio/devices/vfio0', '--libc', so, '-o', 'json']);
    expect(ok.code).toBe(0);
    expect(lastJson(ok.stdout)).toEqual({ device: '/dev/vfio/devices/vfio0', flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING', stopCopyBytes: 65536 + overhead });
    dbl.configure('nomig=1');
    const no = await runCli(['device', 'probe', '/dev/vfio/12', '--bdf', '0000:3b:00.1', '--libc', so]);
    expect(no.code).toBe(1);
    expect(no.stderr).toMatch(/0000:3b:00.1 has no migration support .*\(ENOTTY\)/);
  });
});

function withoutDoubleEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !DOUBLE_ENV.includes(k)));
}

/** Runs a fixture under node with the double LD_PRELOADed; its last stdout line is JSON. */
function runPreloaded(script: string, libc: string, settings: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [
      '--experimental-transform-types', '--no-warnings', '--import', join(repoRoot, 'test/helpers/ts-hooks.ts'),
      join(repoRoot, script), libc, settings,
    ], {
      cwd: repoRoot,
      // libuv's io_uring would read the fd without calling read(); keep its plain read() path.
      env: { ...withoutDoubleEnv(process.env), LD_PRELOAD: libc, UV_USE_IO_URING: '0' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => { stdout += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { stderr += b.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(lastJson(stdout));
      else reject(new Error(`${script} ${signal ? `killed after 20 s (${signal})` : `exited ${code}`}: ${stderr}`));
    });
  });
}
