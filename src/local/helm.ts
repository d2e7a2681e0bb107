/**
 * helm, for the chart's tests and for rendering deploy/: built from Go modules (helm.sh/helm/v3, the
 * version pinned here) into devmig's cache the first time it is needed, like the local API server.
 */
import { execFile } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { buildOnce, cacheDir, goBinary, run } from './apiserver.js';

export const HELM_VERSION = 'v3.22.0';
export const CHART = fileURLToPath(new URL('../../charts/devmig/', import.meta.url));
export const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
/** What deploy/ holds: each file rendered from the chart with these values. */
export const RENDERINGS: Record<string, string[]> = {
  'devmig.yaml': [],
  'devmig-simulated.yaml': ['--set', 'agent.kernel.enabled=false', '--set', 'agent.simulated.enabled=true', '--set', 'agent.nodeSelector=null'],
};
export const RELEASE = { name: 'devmig', namespace: 'devmig-system' };
/** helm built by `go install` carries no linker-set defaults and would assume Kubernetes 1.20. */
export const KUBE_VERSION = '1.35.0';

const exec = promisify(execFile);

export async function ensureHelm(log: (line: string) => void = () => undefined): Promise<string> {
  const dir = join(cacheDir(), 'bin', `helm-${HELM_VERSION}`);
  return buildOnce(join(dir, 'helm'), log, async () => {
    log(`building helm ${HELM_VERSION} from Go modules into ${dir} (about two minutes the first time)`);
    await run(goBinary(), ['install', `helm.sh/helm/v3/cmd/helm@${HELM_VERSION}`], tmpdir(), { ...process.env, GOBIN: dir, GOFLAGS: '-mod=mod' });
  });
}

export async function helm(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ stdout: string; stderr: string }> {
  const bin = await ensureHelm((l) => process.stderr.write(`${l}\n`));
  return exec(bin, args, { env: { ...process.env, HELM_CACHE_HOME: join(tmpdir(), 'devmig-helm-cache'), HELM_CONFIG_HOME: join(tmpdir(), 'devmig-helm-config'), ...env }, maxBuffer: 64 << 20 });
}

/** `helm template` of the chart as deploy/<file> holds it. */
export async function render(file: string): Promise<string> {
  const extra = RENDERINGS[file];
  if (!extra) throw new Error(`deploy/${file} is not rendered from the chart; known: ${Object.keys(RENDERINGS).join(', ')}`);
  const { stdout } = await helm(['template', RELEASE.name, CHART, '--namespace', RELEASE.namespace, '--kube-version', KUBE_VERSION, ...extra]);
  return `# Rendered from charts/devmig by \`npm run render\` (helm template ${RELEASE.name} --namespace ${RELEASE.namespace}${extra.length ? ` ${extra.join(' ')}` : ''}). Do not edit.\n${stdout}`;
}
