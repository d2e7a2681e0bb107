/** `devmig fsm`: the planner's view of the kernel's state machine. */
import type { Command } from 'commander';
import { PlanRefused, planPath, planTable } from '../vfio/planner.js';
import { STATE_NAMES, flagNames, parseFlags, parseStateName } from '../vfio/uapi.js';
import { CliError, jsonLine, parseFormat, table, type Io } from './output.js';

interface PathOpts { from: string; to: string; flags: string; output?: string }
interface TableOpts { flags: string; output?: string }

export function registerFsm(program: Command, io: Io): void {
  const fsm = program.command('fsm').description('the VFIO migration state machine: the arcs the kernel walks');
  fsm.command('path')
    .description('the arcs from one state to another for a device with the given migration flags')
    .requiredOption('--from <state>', 'current state, e.g. RUNNING')
    .requiredOption('--to <state>', 'requested state, e.g. STOP_COPY')
    .option('--flags <flags>', 'device migration flags, comma separated', 'STOP_COPY,P2P,PRE_COPY')
    .option('-o, --output <format>', 'json for one JSON object')
    .action((opts: PathOpts) => fsmPath(opts, io));
  fsm.command('table')
    .description('the path for every (from, to) pair, or refused')
    .option('--flags <flags>', 'device migration flags, comma separated', 'STOP_COPY,P2P,PRE_COPY')
    .option('-o, --output <format>', 'json for one JSON object')
    .action((opts: TableOpts) => fsmTable(opts, io));
}

function fsmPath(opts: PathOpts, io: Io): void {
  const format = parseFormat(opts.output);
  const { from, to, flags } = parseArgs(opts);
  let path;
  try {
    path = planPath(from, to, flags);
  } catch (e) {
    if (e instanceof PlanRefused) throw new CliError(e.message, 1);
    throw e;
  }
  if (format === 'json') return io.out(jsonLine({ path }));
  const arcs = path.length - 1;
  io.out(`${path.join(' -> ')}\n(${arcs} arc${arcs === 1 ? '' : 's'}, flags ${flagNames(flags).join(',')})`);
}

function fsmTable(opts: TableOpts, io: Io): void {
  const format = parseFormat(opts.output);
  const flags = parseFlagsOption(opts.flags);
  const t = planTable(flags);
  if (format === 'json') return io.out(jsonLine(t));
  const rows = STATE_NAMES.flatMap((from) => STATE_NAMES.map((to) => {
    const p = t[from][to];
    return [from, to, p ? String(p.length - 1) : '-', p ? p.join(' -> ') : 'refused (EINVAL)'];
  }));
  io.out(`flags ${flagNames(flags).join(',')}\n${table(['FROM', 'TO', 'ARCS', 'PATH'], rows)}`);
}

function parseArgs(opts: PathOpts) {
  try {
    return { from: parseStateName(opts.from), to: parseStateName(opts.to), flags: parseFlags(opts.flags) };
  } catch (e) {
    throw new CliError(`${(e as Error).message}`, 1);
  }
}

function parseFlagsOption(text: string): number {
  try {
    return parseFlags(text);
  } catch (e) {
    throw new CliError(`--flags: ${(e as Error).message}`, 1);
  }
}
