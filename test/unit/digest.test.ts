import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { DEFAULT_DIGEST, algorithmOf, createStreamDigest } from '../../src/relay/digest.js';
import { ConfigError, parseAgentConfig } from '../../src/agent/config.js';

const abc = Buffer.from('abc');

it('computes each algorithm\'s published value for "abc"', () => {
  const of = (a: 'blake3' | 'sha256' | 'crc32') => {
    const d = createStreamDigest(a);
    d.update(abc);
    return d.value();
  };
  // BLAKE3's test vector; SHA-256 as node:crypto computes it; CRC-32 (IEEE) of "abc".
  expect(of('blake3')).toBe('blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85');
  expect(of('sha256')).toBe(`sha256:${createHash('sha256').update(abc).digest('hex')}`);
  expect(of('crc32')).toBe('crc32:352441c2');
});

it('gives the same value however the stream is cut into chunks, and tells one byte apart', () => {
  const data = Buffer.alloc(3 * 2 ** 20 + 7);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  for (const a of ['blake3', 'sha256', 'crc32'] as const) {
    const whole = createStreamDigest(a);
    whole.update(data);
    const cut = createStreamDigest(a);
    for (let at = 0; at < data.length; at += 16_381) cut.update(data.subarray(at, at + 16_381));
    expect(cut.value()).toBe(whole.value());
    const flipped = Buffer.from(data);
    flipped[2 ** 20] = (flipped[2 ** 20] ?? 0) ^ 1;
    const other = createStreamDigest(a);
    other.update(flipped);
    expect(other.value()).not.toBe(whole.value());
    expect(algorithmOf(whole.value())).toBe(a);
  }
});

it('defaults agents to blake3 and names the field when the digest is unknown', () => {
  const base = { node: 'n', listen: { host: '127.0.0.1', port: 1 }, stateDir: '/tmp/x', tls: { ca: 'a', cert: 'b', key: 'c' } };
  expect(DEFAULT_DIGEST).toBe('blake3');
  expect(parseAgentConfig(base).digest).toBe('blake3');
  expect(() => parseAgentConfig({ ...base, digest: 'md5' })).toThrow(ConfigError);
  expect(() => parseAgentConfig({ ...base, digest: 'md5' })).toThrow(/digest/);
});

it('accepts its own digest unless told more; timeouts default, are Go durations, and a bad one is named', () => {
  const base = { node: 'n', listen: { host: '127.0.0.1', port: 1 }, stateDir: '/tmp/x', tls: { ca: 'a', cert: 'b', key: 'c' } };
  const c = parseAgentConfig(base);
  expect(c.acceptDigests).toBeUndefined(); // the target then takes `digest` alone
  expect(c.timeouts).toEqual({ handshake: 10_000, unauthenticated: 10_000, requestBody: 10_000, streamIdle: 30_000 });
  expect(parseAgentConfig({ ...base, acceptDigests: ['blake3', 'sha256'], timeouts: { streamIdle: '1m30s' } })).toMatchObject({
    acceptDigests: ['blake3', 'sha256'], timeouts: { streamIdle: 90_000, handshake: 10_000 },
  });
  expect(() => parseAgentConfig({ ...base, acceptDigests: ['md5'] })).toThrow(/acceptDigests/);
  expect(() => parseAgentConfig({ ...base, acceptDigests: [] })).toThrow(/acceptDigests/);
  expect(() => parseAgentConfig({ ...base, timeouts: { streamIdle: 'soon' } })).toThrow(/"soon" is not a Go duration; write e\.g\. 300ms.*at timeouts\.streamIdle/s);
  expect(() => parseAgentConfig({ ...base, timeouts: { requestBody: '0s' } })).toThrow(/must be longer than 0.*at timeouts\.requestBody/s);
  expect(() => parseAgentConfig({ ...base, timeouts: { idle: '1s' } })).toThrow(/idle/);
});

describe('on a platform without the native addons', () => {
  const repo = fileURLToPath(new URL('../../', import.meta.url));
  const probe = `
    const d = await import('${repo}dist/relay/digest.js');
    const n = await import('${repo}dist/native.js');
    const c = await import('${repo}dist/agent/config.js');
    const base = { node: 'n', listen: { host: '127.0.0.1', port: 1 }, stateDir: '/tmp/x', tls: { ca: 'a', cert: 'b', key: 'c' } };
    const tryIt = (f) => { try { return f(); } catch (e) { return e.message; } };
    console.log(JSON.stringify({
      default: d.DEFAULT_DIGEST, crc: n.crc32(Buffer.from('abc')).toString(16),
      stream: tryIt(() => d.createStreamDigest('blake3').value()),
      config: tryIt(() => c.parseAgentConfig({ ...base, digest: 'blake3' }).digest),
      configDefault: c.parseAgentConfig(base).digest,
    }));`;
  const run = (hooked: boolean) => JSON.parse(execFileSync(process.execPath,
    [...(hooked ? ['--import', `${repo}test/helpers/no-native.mjs`] : []), '--input-type=module', '-e', probe], { encoding: 'utf8' })) as Record<string, string>;

  it('defaults to sha256, refuses blake3 by name with the fix, and computes the same CRC-32 with zlib', () => {
    expect(run(false)).toMatchObject({ default: 'blake3', crc: '352441c2', configDefault: 'blake3', config: 'blake3' });
    const without = run(true);
    expect(without).toMatchObject({ default: 'sha256', crc: '352441c2', configDefault: 'sha256' });
    expect(without.stream).toMatch(/blake3 is not available on linux-x64: @napi-rs\/blake-hash did not load .*; use digest: sha256/);
    expect(without.config).toMatch(/blake3 is not available.*use digest: sha256.*at digest/s);
  });
});
