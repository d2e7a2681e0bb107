/** `devmig controller`: the operator's controller. */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { loadControllerConfig } from '../controller/config.js';
import { Controller } from '../controller/controller.js';
import { Kube } from '../controller/kube.js';
import { createLogger } from '../log.js';
import { CliError, type Io } from './output.js';

export function registerController(program: Command, _io: Io): void {
  program.command('controller')
    .description('run the controller: reconciles DeviceMigrations by directing the node agents')
    .requiredOption('--config <file>', 'controller configuration (YAML or JSON)')
    .action((opts: { config: string }) => runController(opts.config));
}

async function runController(path: string): Promise<void> {
  const cfg = await loadControllerConfig(path);
  const secret = await readFile(cfg.ticketSecretFile);
  if (secret.length < 32) throw new CliError(`${cfg.ticketSecretFile}: the ticket secret must hold at least 32 bytes`);
  const [ca, cert, key] = await Promise.all([readFile(cfg.tls.ca), readFile(cfg.tls.cert), readFile(cfg.tls.key)]);
  const log = createLogger('controller');
  const le = cfg.leaderElection;
  const controller = new Controller({
    kube: Kube.fromFile(cfg.kubeconfig), tls: { ca, cert, key }, ticketSecret: secret, log, workers: cfg.workers,
    metricsPort: cfg.metrics.port, metricsHost: cfg.metrics.host,
    ...(le.enabled ? { leader: { namespace: le.namespace, name: le.name, identity: le.identity, leaseSeconds: le.leaseSeconds } } : {}),
  });
  await controller.start();
  log.info({ metrics: controller.metricsPort }, 'controller running');
  await new Promise<void>((resolve) => {
    const stop = () => { controller.stop().then(resolve, resolve); };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
