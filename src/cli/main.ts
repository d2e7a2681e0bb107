/** The `devmig` command: wiring only; each concern registers its own subcommands. */
import { Command, CommanderError } from 'commander';
import { DeviceError } from '../vfio/device.js';
import { registerAgent } from './agent.js';
import { registerController } from './controller.js';
import { registerLocal } from './local.js';
import { registerDemo } from './demo.js';
import { registerDevice } from './device.js';
import { registerFsm } from './fsm.js';
import { CliError, jsonLine, processIo, type Io } from './output.js';
import { registerSim } from './sim.js';

export function buildProgram(io: Io): Command {
  const program = new Command('devmig')
    .description('devmig: live migration of VFIO device state between Kubernetes nodes')
    .showHelpAfterError()
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
  registerFsm(program, io);
  registerSim(program, io);
  registerDevice(program, io);
  registerDemo(program, io);
  registerAgent(program, io);
  registerController(program, io);
  registerLocal(program, io);
  for (const c of program.commands) c.exitOverride().configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) });
  return program;
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[], io: Io = processIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    return report(e, argv, io);
  }
}

function report(e: unknown, argv: string[], io: Io): number {
  if (e instanceof CommanderError) {
    return e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.exitCode === 0 ? 0 : 2;
  }
  const { message, code } = describe(e);
  if (wantsJson(argv)) io.out(jsonLine({ error: message }));
  else io.err(`error: ${message}`);
  return code;
}

function describe(e: unknown): { message: string; code: number } {
  if (e instanceof CliError) return { message: e.message, code: e.exitCode };
  if (e instanceof DeviceError) return { message: `${e.message} (${e.errno})`, code: 1 };
  if (e instanceof Error) return { message: e.message, code: 1 };
  return { message: String(e), code: 1 };
}

function wantsJson(argv: string[]): boolean {
  return argv.some((a, i) => a === '-ojson' || a === '--output=json' || ((a === '-o' || a === '--output') && argv[i + 1] === 'json'));
}
