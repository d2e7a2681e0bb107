/**
 * How every command answers: people get text; `-o json` gets one JSON object on the last line of
 * stdout (DESIGN.md, Conventions). Failures exit 1 with the reason; usage errors exit 2.
 */

export type OutputFormat = 'text' | 'json';

export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(message: string, readonly exitCode = 1, readonly details?: Record<string, unknown>) {
    super(message);
  }
}

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

export const processIo: Io = {
  out: (t) => process.stdout.write(t.endsWith('\n') ? t : `${t}\n`),
  err: (t) => process.stderr.write(t.endsWith('\n') ? t : `${t}\n`),
};

export function parseFormat(value: string | undefined): OutputFormat {
  if (value === undefined || value === 'text' || value === 'wide') return 'text';
  if (value === 'json') return 'json';
  throw new CliError(`-o ${value}: unknown output format; use -o json, or leave it out for text`, 2);
}

/** Renders rows as an aligned table with a header. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

export function jsonLine(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? Number(v) : v));
}
