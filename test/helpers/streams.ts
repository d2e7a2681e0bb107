/** Reading a device's save stream in tests: the kernel guest's suites and the double's preloaded fixtures. */
import type { SaveStream } from '../../src/vfio/device.js';

/** Reads until the stream pauses (PRE_COPY's temporary end, ENOMSG) or ends (0): the bytes, and what ended the read. */
export async function readUntilPause(s: SaveStream, chunk = 4096): Promise<{ data: Buffer; end: 'ENOMSG' | 'EOF' }> {
  const parts: Buffer[] = [];
  for (;;) {
    const b = Buffer.alloc(chunk);
    const n = await s.read(b);
    if (n === 'ENOMSG' || n === 0) return { data: Buffer.concat(parts), end: n === 0 ? 'EOF' : 'ENOMSG' };
    parts.push(b.subarray(0, n));
  }
}
