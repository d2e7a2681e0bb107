/**
 * Property-based fuzzing (fast-check) of the parsers bad input reaches first: quantities and
 * durations (CLI, configs, specs), the agent's request schemas, and the simulated driver's stream
 * format at RESUMING -> STOP. A fixed seed keeps CI deterministic; DEVMIG_FUZZ_SEED and
 * DEVMIG_FUZZ_RUNS explore further. The seed is printed so a failure can be replayed.
 */
import fc from 'fast-check';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cancelRequest, receiveRequest, sendRequest, setStateRequest } from '../../src/agentapi/types.js';
import { parseDuration, parseQuantity, QuantityError } from '../../src/api/quantity.js';
import { quantityPattern } from '../../src/api/types.js';
import type { ResumeStream, SaveStream } from '../../src/vfio/device.js';
import { SimDevice } from '../../src/vfio/sim/device.js';
import { simDigest } from '../../src/vfio/sim/digest.js';

const seed = Number(process.env.DEVMIG_FUZZ_SEED ?? 20261125);
const runs = (n: number) => Number(process.env.DEVMIG_FUZZ_RUNS ?? n);
beforeAll(() => { process.stdout.write(`fuzz seed ${seed} (DEVMIG_FUZZ_SEED to change)\n`); });

/** Strings that look almost like quantities and durations, and plain junk. */
const numberish = fc.oneof(
  fc.string(),
  fc.tuple(fc.constantFrom('', '-', ' ', '+'), fc.nat(), fc.constantFrom('', '.', '.5', 'e3'),
    fc.constantFrom('', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei', 'k', 'M', 'G', 'T', 'P', 'E', 'm', 'KB', 'ms', 's', 'm', 'h', 'us', 'µs', 'ns', 'd', '1h30m', ' Mi'))
    .map(([a, b, c, d]) => `${a}${b}${c}${d}`),
);

describe('quantities and durations', () => {
  it('a quantity parses to whole non-negative bytes exactly when the CRD pattern accepts it, else a QuantityError', () => {
    const crd = new RegExp(quantityPattern);
    fc.assert(fc.property(numberish, (s) => {
      let bytes: number | undefined;
      try {
        bytes = parseQuantity(s);
      } catch (e) {
        expect(e).toBeInstanceOf(QuantityError);
        expect((e as Error).message).toMatch(/is not a Kubernetes quantity/);
      }
      if (bytes !== undefined) {
        expect(Number.isInteger(bytes) && bytes >= 0).toBe(true);
        expect(crd.test(s.trim())).toBe(true);
      } else {
        expect(crd.test(s)).toBe(false);
      }
    }), { seed, numRuns: runs(3000) });
  });

  it('a duration parses to non-negative milliseconds, or fails with a message naming the input', () => {
    fc.assert(fc.property(numberish, (s) => {
      try {
        const ms = parseDuration(s);
        expect(Number.isFinite(ms) && ms >= 0).toBe(true);
      } catch (e) {
        expect((e as Error).message).toContain(`"${s}" is not a Go duration`);
      }
    }), { seed, numRuns: runs(3000) });
  });
});

describe('agent request schemas', () => {
  const schemas = { setStateRequest, receiveRequest, sendRequest, cancelRequest };
  const valid = {
    setStateRequest: { migration: 'm', op: 'a', state: 'STOP' },
    receiveRequest: { migration: 'm', op: 'a', ticket: 'A'.repeat(43), sourceNode: 'node-a' },
    sendRequest: { migration: 'm', op: 'a', ticket: 'A'.repeat(43), target: { node: 'node-b', device: 'sim-0', endpoint: 'https://127.0.0.3:9443' } },
    cancelRequest: { op: 'a' },
  };
  it.each(Object.keys(schemas))('%s: any JSON is parsed or refused with the path of what is wrong; never a throw', (key) => {
    const schema = schemas[key as keyof typeof schemas];
    const known = Object.keys(schema.shape);
    const base = valid[key as keyof typeof valid];
    // Arbitrary JSON, and the valid request with one field replaced by arbitrary JSON or a new key.
    const mutated = fc.tuple(fc.constantFrom(...Object.keys(base), '__proto__', 'constructor', 'extra'), fc.jsonValue())
      .map(([k, v]) => JSON.parse(JSON.stringify({ ...base, [k]: v })) as unknown);
    fc.assert(fc.property(fc.oneof(fc.jsonValue(), mutated), (input) => {
      const r = schema.safeParse(input);
      if (r.success) {
        for (const k of Object.keys(r.data)) expect(known).toContain(k);
      } else {
        expect(r.error.issues.length).toBeGreaterThan(0);
        for (const i of r.error.issues) expect(Array.isArray(i.path)).toBe(true);
      }
    }), { seed, numRuns: runs(1500) });
  });
});

describe('the simulated driver\'s stream at RESUMING -> STOP', () => {
  let dir: string;
  let good: Buffer;
  let n = 0;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'devmig-fuzz-'));
    const src = await SimDevice.open({ dir, name: 'src', stateSize: 64 * 1024, pageSize: 4096 });
    const r = await src.setState('STOP_COPY');
    const parts: Buffer[] = [];
    for (;;) {
      const b = Buffer.alloc(16 * 1024);
      const k = await (r.stream as SaveStream).read(b);
      if (k === 0 || k === 'ENOMSG') break;
      parts.push(b.subarray(0, k));
    }
    good = Buffer.concat(parts);
    await src.close();
  });
  afterAll(async () => { await rm(dir, { recursive: true, force: true }); });

  type Mutation = { kind: 'truncate'; at: number } | { kind: 'flip'; at: number; bit: number } | { kind: 'insert'; at: number; bytes: Uint8Array } | { kind: 'drop'; at: number; len: number } | { kind: 'junk'; bytes: Uint8Array };
  const mutation: fc.Arbitrary<Mutation> = fc.oneof(
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
    fc.record({ kind: fc.constant('drop' as const), at: fc.nat(), len: fc.integer({ min: 1, max: 5000 }) }),
    fc.record({ kind: fc.constant('junk' as const), bytes: fc.uint8Array({ maxLength: 9000 }) }),
  );
  function apply(m: Mutation): Buffer {
    const at = 'at' in m ? m.at % good.length : 0;
    switch (m.kind) {
      case 'truncate': return good.subarray(0, at);
      case 'flip': { const c = Buffer.from(good); c[at] = c[at]! ^ (1 << m.bit); return c; }
      case 'insert': return Buffer.concat([good.subarray(0, at), m.bytes, good.subarray(at)]);
      case 'drop': return Buffer.concat([good.subarray(0, at), good.subarray(at + m.len)]);
      case 'junk': return Buffer.from(m.bytes);
    }
  }

  it('every damaged stream is refused (ERROR, EINVAL), the target keeps its own state, nothing crashes', async () => {
    await fc.assert(fc.asyncProperty(mutation, fc.integer({ min: 1, max: 20_000 }), async (m, piece) => {
      const data = apply(m);
      fc.pre(!data.equals(good));
      const name = `dst-${++n}`;
      const dst = await SimDevice.open({ dir, name, stateSize: 64 * 1024, pageSize: 4096 });
      try {
        const before = await simDigest(dir, name);
        const w = (await dst.setState('RESUMING')).stream as ResumeStream;
        for (let at = 0; at < data.length; at += piece) {
          try { await w.write(data.subarray(at, at + piece)); } catch { break; } // refused early: fine
        }
        const commit = await dst.setState('STOP');
        expect(commit.error?.errno).toBe('EINVAL');
        expect(commit.state).toBe('ERROR');
        expect((await simDigest(dir, name)).sha256).toBe(before.sha256);
      } finally {
        await dst.close();
      }
    }), { seed, numRuns: runs(150) });
  }, 120_000);

  it('and the intact stream, cut anywhere into pieces, is accepted', async () => {
    await fc.assert(fc.asyncProperty(fc.integer({ min: 1, max: 20_000 }), async (piece) => {
      const name = `ok-${++n}`;
      const dst = await SimDevice.open({ dir, name, stateSize: 64 * 1024, pageSize: 4096 });
      try {
        const w = (await dst.setState('RESUMING')).stream as ResumeStream;
        for (let at = 0; at < good.length; at += piece) await w.write(good.subarray(at, at + piece));
        expect((await dst.setState('STOP')).error).toBeUndefined();
      } finally {
        await dst.close();
      }
    }), { seed, numRuns: runs(20) });
  }, 60_000);
});
