import { createHash } from 'node:crypto';
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
