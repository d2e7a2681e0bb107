/**
 * bench:relay itself, small: every stage moves the same bytes between real processes over TLS on
 * loopback and reports them, so the benchmark (its own command, not run here at size) cannot rot.
 */
import { lastJson, repoRoot, runScript } from '../helpers/cli.js';

interface Stage { MBps: number; ratio: number; cpu_s_per_GiB: number[] }
interface Output {
  bytes: number; relay_MBps: number; baseline_MBps: number; ratio: number; agent_peak_rss_MB: number; digest: string;
  cpu_s_per_GiB: { relay: number[]; baseline: number[] }; stages: { h2: Stage; relay_code: Stage; devices: { cpu_s_per_GiB: number[] } };
}

test('bench:relay moves a 16 MiB state through the agents and every comparison stage, and says where the time goes', async () => {
  const run = await runScript(`${repoRoot}dist/bench/relay.js`, ['--size', '16Mi', '-o', 'json', '--digest', 'crc32']);
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  const out = lastJson(run.stdout) as Output;
  // 16 MiB of state in 1 MiB pages: a 32-byte header, 16 records of 16 + 1 MiB, the end record.
  expect(out.bytes).toBe(32 + 16 * (16 + 2 ** 20) + 16);
  expect(out.digest).toBe('crc32');
  for (const s of [out.relay_MBps, out.baseline_MBps, out.stages.h2.MBps, out.stages.relay_code.MBps]) expect(s).toBeGreaterThan(0);
  // Each ratio is of the unrounded rates; the rates are printed to 0.1 MB/s, the ratio to 0.001.
  const agrees = (ratio: number, MBps: number) =>
    expect(Math.abs(ratio - MBps / out.baseline_MBps)).toBeLessThanOrEqual(0.0005 + (0.05 * (1 + ratio)) / out.baseline_MBps + 1e-9);
  agrees(out.ratio, out.relay_MBps);
  agrees(out.stages.relay_code.ratio, out.stages.relay_code.MBps);
  for (const cpu of [out.cpu_s_per_GiB.relay, out.cpu_s_per_GiB.baseline, out.stages.h2.cpu_s_per_GiB, out.stages.relay_code.cpu_s_per_GiB,
    out.stages.devices.cpu_s_per_GiB]) {
    expect(cpu).toHaveLength(2);
    for (const c of cpu) expect(c).toBeGreaterThan(0);
  }
  expect(out.agent_peak_rss_MB).toBeGreaterThan(20);
}, 120_000);
