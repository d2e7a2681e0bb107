/**
 * Kubernetes quantities ("64Mi", "1Gi", "500M") and Go durations ("300ms", "1h30m"): the units every
 * size, rate and time in devmig's CLI and specs use (DESIGN.md, Conventions).
 */

const BINARY: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL: Record<string, number> = { '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };
const QUANTITY = /^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$/;

export class QuantityError extends Error {
  override readonly name = 'QuantityError';
}

/** Parses a quantity of bytes; the result is a whole number of bytes (fractions round up). */
export function parseQuantity(input: string | number, what = 'quantity'): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input < 0) throw new QuantityError(`${what}: ${input} is not a non-negative number`);
    return Math.ceil(input);
  }
  const m = QUANTITY.exec(input.trim());
  if (!m) {
    throw new QuantityError(`${what}: "${input}" is not a Kubernetes quantity; write e.g. 64Mi, 1Gi, 500M or 1048576`);
  }
  const suffix = m[2] ?? '';
  const scale = BINARY[suffix] ?? DECIMAL[suffix] ?? 1;
  return Math.ceil(Number(m[1]) * scale);
}

/** Formats bytes as the largest binary quantity that keeps it exact, or with one decimal for people. */
export function formatBytes(bytes: number): string {
  const units = ['', 'Ki', 'Mi', 'Gi', 'Ti'];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text}${units[i]}`;
}

const DURATION_UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION_PART = /([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/y;

/** Parses a Go duration ("300ms", "10m", "1h30m") into milliseconds. */
export function parseDuration(input: string | number, what = 'duration'): number {
  if (typeof input === 'number') {
    if (!Number.isFinite(input) || input < 0) throw new QuantityError(`${what}: ${input} is not a non-negative number of milliseconds`);
    return input;
  }
  const text = input.trim();
  if (text === '0') return 0;
  let total = 0;
  DURATION_PART.lastIndex = 0;
  let pos = 0;
  while (pos < text.length) {
    DURATION_PART.lastIndex = pos;
    const m = DURATION_PART.exec(text);
    if (!m) break;
    total += Number(m[1]) * (DURATION_UNITS[m[2] as string] ?? 0);
    pos = DURATION_PART.lastIndex;
  }
  if (pos !== text.length || text.length === 0) {
    throw new QuantityError(`${what}: "${input}" is not a Go duration; write e.g. 300ms, 30s, 10m or 1h30m`);
  }
  return total;
}
