/** `devmig sim`: simulated devices, for trying devmig and for checking what a migration moved. */
import type { Command } from 'commander';
import { formatBytes, parseQuantity } from '../api/quantity.js';
import { SimDevice } from '../vfio/sim/device.js';
import { simDigest } from '../vfio/sim/digest.js';
import { flagNames, parseFlags } from '../vfio/uapi.js';
import { localSimDir } from './local.js';
import { CliError, jsonLine, parseFormat, type Io } from './output.js';

interface DigestOpts { dir?: string; node?: string; local: string; device: string; output?: string }
interface CreateOpts { dir: string; device: string; size: string; flags: string; migration: boolean; output?: string }

export function registerSim(program: Command, io: Io): void {
  const sim = program.command('sim').description('simulated VFIO migration devices');
  sim.command('digest')
    .description('the SHA-256 of a simulated device\'s state (to check that a migration moved it exactly)')
    .option('--dir <dir>', 'directory holding the simulated devices')
    .option('--node <node>', 'a node of the local environment (devmig local up) instead of --dir')
    .option('--local <dir>', 'the local environment\'s directory', '.devmig')
    .requiredOption('--device <name>', 'device name, e.g. sim-0')
    .option('-o, --output <format>', 'json for one JSON object')
    .action((opts: DigestOpts) => digest(opts, io));
  sim.command('create')
    .description('create (or open and keep) a simulated device')
    .requiredOption('--dir <dir>', 'directory holding the simulated devices')
    .requiredOption('--device <name>', 'device name, e.g. sim-0')
    .option('--size <quantity>', 'state size, a Kubernetes quantity', '64Mi')
    .option('--flags <flags>', 'migration flags', 'STOP_COPY,P2P,PRE_COPY')
    .option('--no-migration', 'simulate a VFIO device whose driver cannot migrate (probe answers ENOTTY)')
    .option('-o, --output <format>', 'json for one JSON object')
    .action((opts: CreateOpts) => create(opts, io));
}

async function digest(opts: DigestOpts, io: Io): Promise<void> {
  const format = parseFormat(opts.output);
  if (!opts.dir === !opts.node) throw new CliError('give either --dir DIR or --node NODE (of the local environment)');
  const dir = opts.dir ?? (await localSimDir(opts.local, opts.node!));
  const d = await simDigest(dir, opts.device);
  if (format === 'json') return io.out(jsonLine(d));
  io.out(`${d.sha256}  ${d.device} (${formatBytes(d.bytes)}, ${d.state}, generation ${d.generation})`);
}

async function create(opts: CreateOpts, io: Io): Promise<void> {
  const format = parseFormat(opts.output);
  let stateSize: number;
  let flags: number;
  try {
    stateSize = parseQuantity(opts.size, '--size');
    flags = opts.migration ? parseFlags(opts.flags) : 0;
  } catch (e) {
    throw new CliError((e as Error).message);
  }
  const dev = await SimDevice.open({ dir: opts.dir, name: opts.device, stateSize, flags });
  await dev.close();
  const d = await simDigest(opts.dir, opts.device);
  if (format === 'json') return io.out(jsonLine({ ...d, flags: flagNames(flags) }));
  io.out(`created ${d.device}: ${formatBytes(d.bytes)}, flags ${flagNames(flags).join(',')}, sha256 ${d.sha256}`);
}
