import { measure } from '../../src/controller/actions.js';
import type { DeviceMigration } from '../../src/kube/kube.js';

const MiB = 2 ** 20;
const t0 = Date.parse('2026-11-30T00:00:00Z');
const at = (transfer: Record<string, unknown> | undefined, now: number) => ({
  now, m: { metadata: { name: 'm' }, spec: {}, status: transfer ? { transfer } : {} } as unknown as DeviceMigration,
});
const seen = (bytes: number, extra: Record<string, unknown> = {}) => ({ bytes, observedAt: new Date(t0).toISOString(), ...extra });

it('measures bytes over the time between looks, and not sooner than 0.2 s', () => {
  expect(measure(at(seen(0), t0 + 100), MiB, undefined, undefined)).toMatchObject({ bytes: MiB, observedAt: new Date(t0).toISOString() });
  expect(measure(at(seen(0), t0 + 500), MiB, undefined, undefined).rate).toBe(2 * MiB);
});

it('takes no first rate from a look where nothing moved: a stall at the start is not a rate of 0', () => {
  const flat = measure(at(seen(8 * MiB), t0 + 300), 8 * MiB, 4 * MiB, undefined);
  expect(flat.rate).toBeUndefined();
  expect(flat.observedAt).toBe(new Date(t0).toISOString()); // the next look measures from the same point
  expect(measure(at(flat, t0 + 600), 9 * MiB, 3 * MiB, undefined).rate).toBe(Math.round(MiB / 0.6));
});

it('once a rate is known, a look where nothing moved is a stall and pulls it down; an idle device does not', () => {
  expect(measure(at(seen(8 * MiB, { rate: 4 * MiB }), t0 + 300), 8 * MiB, 4 * MiB, undefined).rate).toBe(2 * MiB);
  expect(measure(at(seen(8 * MiB, { rate: 4 * MiB }), t0 + 300), 8 * MiB, 0, undefined, true).rate).toBe(4 * MiB);
});
