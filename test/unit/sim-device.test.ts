import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceError, type ResumeStream, type SaveStream } from '../../src/vfio/device.js';
import { SimDevice } from '../../src/vfio/sim/device.js';
import { simDigest } from '../../src/vfio/sim/digest.js';
import { MigFlag } from '../../src/vfio/uapi.js';

const KiB = 1024;
let dir: string;
const open: SimDevice[] = [];

beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'devmig-sim-')); });
afterEach(async () => {
  for (const d of open.splice(0)) await d.close().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

async function device(name: string, extra: Partial<Parameters<typeof SimDevice.open>[0]> = {}): Promise<SimDevice> {
  const d = await SimDevice.open({ dir, name, stateSize: 300 * KiB, pageSize: 64 * KiB, ...extra });
  open.push(d);
  return d;
}

async function readAll(s: SaveStream, chunk = 50 * KiB): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (;;) {
    const buf = Buffer.alloc(chunk);
    const n = await s.read(buf);
    if (n === 'ENOMSG') throw new Error('unexpected ENOMSG in STOP_COPY');
    if (n === 0) return Buffer.concat(parts);
    parts.push(buf.subarray(0, n));
  }
}

async function save(src: SimDevice): Promise<Buffer> {
  const r = await src.setState('STOP_COPY');
  expect(r.error).toBeUndefined();
  return readAll(r.stream as SaveStream);
}

async function resume(dst: SimDevice, data: Buffer, piece = 7777) {
  const r = await dst.setState('RESUMING');
  expect(r.error).toBeUndefined();
  const w = r.stream as ResumeStream;
  for (let at = 0; at < data.length; at += piece) await w.write(data.subarray(at, at + piece));
  return dst.setState('STOP');
}

describe('simulated migration driver', () => {
  it('moves state exactly: source digest before equals target digest after', async () => {
    const src = await device('src');
    const dst = await device('dst');
    const before = await simDigest(dir, 'src');
    expect((await simDigest(dir, 'dst')).sha256).not.toBe(before.sha256);
    const data = await save(src);
    const r = await resume(dst, data);
    expect(r.error).toBeUndefined();
    expect(r.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RESUMING>STOP']);
    expect((await dst.setState('RUNNING')).state).toBe('RUNNING');
    expect((await simDigest(dir, 'dst')).sha256).toBe(before.sha256);
  });

  it('records every arc with timing and walks P2P as the kernel does', async () => {
    const src = await device('src');
    const r = await src.setState('STOP_COPY');
    expect(r.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>RUNNING_P2P', 'RUNNING_P2P>STOP', 'STOP>STOP_COPY']);
    for (const a of r.arcs) {
      expect(a.result).toBe('Succeeded');
      expect(a.durationMs).toBeGreaterThanOrEqual(0);
      expect(Date.parse(a.startedAt)).not.toBeNaN();
    }
  });

  it.each([
    ['short', (d: Buffer) => d.subarray(0, d.length - 100), /short|incomplete/],
    ['long', (d: Buffer) => Buffer.concat([d, Buffer.from('extra')]), /too long/],
    ['corrupt', (d: Buffer) => { const c = Buffer.from(d); c[40_000] = (c[40_000] ?? 0) ^ 1; return c; }, /corrupt/],
  ] as const)('refuses a %s stream at RESUMING -> STOP and keeps its own state', async (_k, mangle, why) => {
    const src = await device('src');
    const dst = await device('dst');
    const dstBefore = await simDigest(dir, 'dst');
    const data = mangle(await save(src));
    const r = await dst.setState('RESUMING');
    const w = r.stream as ResumeStream;
    let writeError: unknown;
    try {
      for (let at = 0; at < data.length; at += 7777) await w.write(data.subarray(at, at + 7777));
    } catch (e) { writeError = e; }
    const commit = await dst.setState('STOP');
    expect(commit.error).toBeInstanceOf(DeviceError);
    expect(commit.error?.errno).toBe('EINVAL');
    expect(commit.error?.message).toMatch(why);
    if (writeError) expect((writeError as Error).message).toMatch(why);
    expect(commit.state).toBe('ERROR');
    expect(commit.arcs.at(-1)).toMatchObject({ from: 'RESUMING', to: 'STOP', result: 'Failed', errno: 'EINVAL' });
    expect((await simDigest(dir, 'dst')).sha256).toBe(dstBefore.sha256);
  });

  it('a slow arc takes its delay, succeeds, and fires only its `times`', async () => {
    const d = await device('slow', { faults: [{ arc: 'RUNNING>RUNNING_P2P', delayMs: 300, times: 1 }] });
    const first = await d.setState('STOP');
    expect(first.error).toBeUndefined();
    expect(first.arcs[0]).toMatchObject({ from: 'RUNNING', to: 'RUNNING_P2P', result: 'Succeeded' });
    expect(first.arcs[0]!.durationMs).toBeGreaterThanOrEqual(290);
    await d.setState('RUNNING');
    const again = await d.setState('STOP');
    expect(again.arcs[0]!.durationMs).toBeLessThan(200);
  });

  it('ERROR is left only by reset, which brings it back RUNNING', async () => {
    const dst = await device('dst', { resumeFailure: 'ERROR' });
    await dst.setState('RESUMING');
    expect((await dst.setState('STOP')).state).toBe('ERROR');
    const stuck = await dst.setState('RUNNING');
    expect(stuck.error?.errno).toBe('EINVAL');
    expect(stuck.error?.message).toMatch(/VFIO_DEVICE_RESET/);
    await dst.reset();
    expect(await dst.getState()).toBe('RUNNING');
  });

  it('persists state across processes and resets a device closed while not RUNNING', async () => {
    const a = await device('a');
    const d0 = await simDigest(dir, 'a');
    await a.close();
    const again = await device('a');
    expect((await simDigest(dir, 'a')).sha256).toBe(d0.sha256);
    await again.setState('STOP');
    await again.close();
    const after = await simDigest(dir, 'a');
    expect(after.state).toBe('RUNNING');
    expect(after.sha256).not.toBe(d0.sha256);
    // Whoever opens it next learns that it was reset (a journal's steps for it no longer stand), once.
    expect(again.resetAtOpen).toBe(false);
    const third = await device('a');
    expect(third.resetAtOpen).toBe(true);
    await third.close();
    expect((await device('a')).resetAtOpen).toBe(false);
  });

  it('refuses a second holder with EBUSY', async () => {
    await device('a');
    await expect(SimDevice.open({ dir, name: 'a' })).rejects.toMatchObject({ errno: 'EBUSY' });
  });

  it('PRE_COPY: initial bytes, dirty bytes from the running workload, ENOMSG, then STOP_COPY to EOF', async () => {
    const src = await device('src', { stateSize: 256 * KiB, pageSize: 16 * KiB, dirtyRate: 2000 * KiB });
    const dst = await device('dst', { stateSize: 256 * KiB, pageSize: 16 * KiB });
    const r = await src.setState('PRE_COPY');
    expect(r.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['RUNNING>PRE_COPY']);
    const s = r.stream as SaveStream;
    const info0 = await src.precopyInfo();
    expect(info0.initialBytes).toBeGreaterThan(256n * 1024n);
    const parts: Buffer[] = [];
    let sawEnomsg = false;
    const deadline = Date.now() + 5000;
    while (!sawEnomsg && Date.now() < deadline) {
      const buf = Buffer.alloc(64 * KiB);
      const n = await s.read(buf);
      if (n === 'ENOMSG') sawEnomsg = true;
      else parts.push(buf.subarray(0, n));
    }
    expect(sawEnomsg).toBe(true);
    expect((await src.precopyInfo()).initialBytes).toBe(0n);
    await new Promise((res) => setTimeout(res, 100));
    expect((await src.precopyInfo()).dirtyBytes).toBeGreaterThan(0n);
    const stop = await src.setState('STOP_COPY');
    expect(stop.arcs.map((a) => `${a.from}>${a.to}`)).toEqual(['PRE_COPY>PRE_COPY_P2P', 'PRE_COPY_P2P>STOP_COPY']);
    expect(stop.stream).toBeUndefined(); // the same data_fd carries on
    parts.push(await readAll(s));
    const finalDigest = await simDigest(dir, 'src');
    const c = await resume(dst, Buffer.concat(parts));
    expect(c.error).toBeUndefined();
    expect((await simDigest(dir, 'dst')).sha256).toBe(finalDigest.sha256);
  });

  it('injected faults: an arc with an errno, into ERROR, and a stream that breaks', async () => {
    const src = await device('src');
    await writeFile(join(dir, 'src', 'faults.json'), JSON.stringify([{ arc: 'STOP>STOP_COPY', errno: 'EIO', times: 1 }]));
    const r = await src.setState('STOP_COPY');
    expect(r.error?.errno).toBe('EIO');
    expect(r.state).toBe('STOP');
    expect(r.arcs.at(-1)).toMatchObject({ from: 'STOP', to: 'STOP_COPY', result: 'Failed', errno: 'EIO' });
    await writeFile(join(dir, 'src', 'faults.json'), JSON.stringify([{ stream: 'error', atByte: 1000 }]));
    const s = (await src.setState('STOP_COPY')).stream as SaveStream;
    await expect(readAll(s)).rejects.toMatchObject({ errno: 'EIO' });
    expect(await src.getState()).toBe('ERROR');
  });

  it('rejects a bad fault file with the field named', async () => {
    const src = await device('src');
    await writeFile(join(dir, 'src', 'faults.json'), JSON.stringify([{ arc: 'RUNNING-STOP' }]));
    await expect(src.setState('STOP')).rejects.toThrow(/arc written FROM>TO/);
  });

  it('a device without PRE_COPY refuses it with the reason', async () => {
    const src = await device('src', { flags: MigFlag.STOP_COPY });
    const r = await src.setState('PRE_COPY');
    expect(r.error?.errno).toBe('EINVAL');
    expect(r.error?.message).toMatch(/lack PRE_COPY/);
    expect(r.arcs).toHaveLength(0);
  });
});
