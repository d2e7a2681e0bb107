/**
 * `devmig demo`: one migration between two simulated devices in this process, arc by arc, with the
 * digest check at the end. It shows the protocol the operator drives across nodes.
 */
import type { Command } from 'commander';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatBytes, parseQuantity } from '../api/quantity.js';
import type { ArcResult, ResumeStream, SaveStream } from '../vfio/device.js';
import { SimDevice } from '../vfio/sim/device.js';
import { simDigest } from '../vfio/sim/digest.js';
import { CliError, jsonLine, parseFormat, table, type Io } from './output.js';

interface DemoOpts { dir?: string; size: string; output?: string }

export function registerDemo(program: Command, io: Io): void {
  program.command('demo')
    .description('migrate one simulated device to another in-process and check the state moved exactly')
    .option('--dir <dir>', 'where the simulated devices live (default: a new temporary directory)')
    .option('--size <quantity>', 'device state size', '64Mi')
    .option('-o, --output <format>', 'json for one JSON object')
    .action((opts: DemoOpts) => demo(opts, io));
}

async function demo(opts: DemoOpts, io: Io): Promise<void> {
  const format = parseFormat(opts.output);
  const say = (t: string) => { if (format === 'text') io.out(t); };
  const dir = opts.dir ?? await mkdtemp(join(tmpdir(), 'devmig-demo-'));
  const stateSize = parseQuantity(opts.size, '--size');
  const src = await SimDevice.open({ dir, name: 'source', stateSize });
  const dst = await SimDevice.open({ dir, name: 'target', stateSize });
  try {
    const before = await simDigest(dir, 'source');
    say(`source ${formatBytes(stateSize)} state sha256 ${before.sha256}`);
    const arcs: Array<ArcResult & { device: string }> = [];
    const record = (device: string, r: { arcs: ArcResult[]; error?: Error }) => {
      arcs.push(...r.arcs.map((a) => ({ ...a, device })));
      if (r.error) throw new CliError(`${device}: ${r.error.message}`);
    };
    const prep = await dst.setState('RESUMING');
    record('target', prep);
    const save = await src.setState('STOP_COPY');
    record('source', save);
    const started = Date.now();
    const bytes = await copy(save.stream as SaveStream, prep.stream as ResumeStream);
    const seconds = (Date.now() - started) / 1000;
    record('target', await dst.setState('STOP'));
    record('target', await dst.setState('RUNNING'));
    const after = await simDigest(dir, 'target');
    const intact = after.sha256 === before.sha256;
    if (format === 'json') {
      io.out(jsonLine({ dir, bytes, seconds, arcs, sourceSha256: before.sha256, targetSha256: after.sha256, intact }));
    } else {
      say(table(['DEVICE', 'FROM', 'TO', 'RESULT', 'MS'], arcs.map((a) => [a.device, a.from, a.to, a.result, String(a.durationMs)])));
      say(`streamed ${formatBytes(bytes)} in ${seconds.toFixed(2)}s`);
      say(`target state sha256 ${after.sha256}: ${intact ? 'identical, the state moved intact' : 'DIFFERENT'}`);
    }
    if (!intact) throw new CliError('the target state differs from the source state');
  } finally {
    await src.close();
    await dst.close();
  }
}

async function copy(from: SaveStream, to: ResumeStream): Promise<number> {
  const buf = Buffer.allocUnsafe(1 << 20);
  let total = 0;
  for (;;) {
    const n = await from.read(buf);
    if (n === 'ENOMSG') continue;
    if (n === 0) return total;
    await to.write(buf.subarray(0, n));
    total += n;
  }
}
