/** `devmig controller`: the operator's controller. */
import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { loadControllerConfig, type ControllerConfig } from '../controller/config.js';
import type { CsrSigner } from '../controller/pki.js';
import type { TlsMaterial } from '../relay/h2.js';
import type { Kube, OwnerReference } from '../kube/kube.js';
import { createLogger } from '../log.js';
import { CliError, type Io } from './output.js';

export function registerController(program: Command, _io: Io): void {
  program.command('controller')
    .description('run the controller: reconciles DeviceMigrations by directing the node agents')
    .requiredOption('--config <file>', 'controller configuration (YAML or JSON)')
    .action((opts: { config: string }) => runController(opts.config));
}

async function credentials(cfg: ControllerConfig, kube: Kube, log: Logger): Promise<{ tls: TlsMaterial; ticketSecret: Buffer; signer?: CsrSigner }> {
  if (cfg.pki) {
    const { controllerTls, CsrSigner, ensurePki } = await import('../controller/pki.js');
    const o = { namespace: cfg.namespace, ...cfg.pki };
    const pki = await ensurePki(kube, o, log);
    return { tls: await controllerTls(pki), ticketSecret: pki.ticketSecret, signer: new CsrSigner(kube, pki, o, log) };
  }
  const secret = await readFile(cfg.ticketSecretFile!);
  if (secret.length < 32) throw new CliError(`${cfg.ticketSecretFile}: the ticket secret must hold at least 32 bytes`);
  const [ca, cert, key] = await Promise.all([readFile(cfg.tls!.ca), readFile(cfg.tls!.cert), readFile(cfg.tls!.key)]);
  return { tls: { ca, cert, key }, ticketSecret: secret };
}

/** With ownerClusterRole, what the controller made belongs to the release (kube/owner.ts); returns that owner. */
async function ownPkiObjects(cfg: ControllerConfig, kube: Kube): Promise<OwnerReference | undefined> {
  if (!cfg.ownerClusterRole) return undefined;
  const { adopt, clusterRoleOwner } = await import('../kube/owner.js');
  const owner = await clusterRoleOwner(kube, cfg.ownerClusterRole);
  if (cfg.pki) {
    await adopt(kube, { apiVersion: 'v1', kind: 'Secret', name: cfg.pki.secretName, namespace: cfg.namespace }, owner);
    await adopt(kube, { apiVersion: 'v1', kind: 'ConfigMap', name: cfg.pki.caConfigMapName, namespace: cfg.namespace }, owner);
  }
  return owner;
}

async function runController(path: string): Promise<void> {
  // The Kubernetes client is loaded by the commands that use it: importing it costs every devmig
  // process ~50 MB of RSS, the agent's included.
  const [{ Controller }, { Kube }] = await Promise.all([import('../controller/controller.js'), import('../kube/kube.js')]);
  const cfg = await loadControllerConfig(path);
  const log = createLogger('controller');
  const kube = Kube.fromFile(cfg.kubeconfig);
  const { tls, ticketSecret, signer } = await credentials(cfg, kube, log);
  const owner = await ownPkiObjects(cfg, kube);
  const le = cfg.leaderElection;
  const controller = new Controller({
    kube, tls, ticketSecret, log, workers: cfg.workers, evacuationMaxParallel: cfg.evacuation.maxParallelTotal,
    agentPods: { namespace: cfg.namespace, serviceAccount: cfg.pki?.agentServiceAccount ?? 'devmig-agent' },
    metricsPort: cfg.metrics.port, metricsHost: cfg.metrics.host,
    ...(le.enabled ? { leader: { namespace: le.namespace ?? cfg.namespace, name: le.name, identity: le.identity, leaseSeconds: le.leaseSeconds, ...(owner ? { owner } : {}) } } : {}),
  });
  await controller.start();
  // Every replica signs: a CSR is settled once (approval and certificate are conditional writes), and
  // agents must get certificates even while the leader is being replaced.
  signer?.start();
  log.info({ metrics: controller.metricsPort, pki: cfg.pki ? `${cfg.namespace}/${cfg.pki.secretName}` : 'files' }, 'controller running');
  await new Promise<void>((resolve) => {
    const stop = () => { void signer?.stop(); controller.stop().then(resolve, resolve); };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
