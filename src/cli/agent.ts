/** `devmig agent`: the node agent, and its fd holder. */
import type { Command } from 'commander';
import { fileURLToPath } from 'node:url';
import { Agent } from '../agent/agent.js';
import { loadAgentConfig } from '../agent/config.js';
import { runHolder } from '../agent/holder.js';
import { createLogger } from '../log.js';
import type { Io } from './output.js';

interface AgentOpts { config: string; node?: string; advertise?: string }

const devmigBin = fileURLToPath(new URL('../../bin/devmig.js', import.meta.url));

export function registerAgent(program: Command, _io: Io): void {
  program.command('agent')
    .description('run the node agent: owns this node\'s VFIO devices, drives their FSM, relays their state')
    .requiredOption('--config <file>', 'agent configuration (YAML or JSON)')
    .option('--node <name>', 'this node\'s name, over the file\'s `node` (a DaemonSet passes $(NODE_NAME))')
    .option('--advertise <url>', 'https://HOST:PORT peers reach this agent at, over the file\'s `advertise`')
    .action((opts: AgentOpts) => runAgent(opts));
  program.command('holder')
    .description('the fd holder the agent starts: keeps devices open across agent restarts')
    .requiredOption('--state-dir <dir>', 'the agent\'s state directory')
    .action((opts: { stateDir: string }) => runHolder(opts.stateDir));
}

async function runAgent(opts: AgentOpts): Promise<void> {
  const config = await loadAgentConfig(opts.config, { ...(opts.node ? { node: opts.node } : {}), ...(opts.advertise ? { advertise: opts.advertise } : {}) });
  const log = createLogger('agent').child({ node: config.node });
  const agent = await Agent.start(config, { log, devmigBin });
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'draining');
      agent.stop().then(resolve, (e: unknown) => { log.error({ err: e }, 'shutdown failed'); resolve(); });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
}
