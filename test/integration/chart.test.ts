/**
 * The Helm chart: lint, schema, the security it promises, configs the product itself accepts, deploy/
 * current, and an install into a real API server (helm built from Go modules, cached).
 */
import * as k8s from '@kubernetes/client-node';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, parseAllDocuments } from 'yaml';
import { AGENT_NODE_FLAGS, parseAgentConfig } from '../../src/agent/config.js';
import { crdFiles } from '../../src/api/crd.js';
import { controllerConfigSchema } from '../../src/controller/config.js';
import { Kube } from '../../src/kube/kube.js';
import { startApiserver, type RunningApiserver } from '../../src/local/apiserver.js';
import { CHART, DEPLOY, ensureHelm, helm, KUBE_VERSION, render, RENDERINGS } from '../../src/local/helm.js';

interface Obj { kind: string; apiVersion: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; spec?: unknown; data?: Record<string, string> }

const podSpec = (o: Obj) => (o.spec as { template: { spec: k8s.V1PodSpec } }).template.spec;

const SIM = RENDERINGS['devmig-simulated.yaml']!;

async function template(...set: string[]): Promise<Obj[]> {
  const { stdout } = await helm(['template', 'devmig', CHART, '--namespace', 'devmig-system', '--kube-version', KUBE_VERSION, ...set]);
  return parseAllDocuments(stdout).map((d) => d.toJS() as Obj).filter(Boolean);
}

async function templateError(...set: string[]): Promise<string> {
  try {
    await template(...set);
  } catch (e) {
    return (e as { stderr?: string }).stderr ?? String(e);
  }
  throw new Error(`helm template ${set.join(' ')} was accepted`);
}

const find = (docs: Obj[], kind: string, component?: string) => {
  const o = docs.find((d) => d.kind === kind && (!component || d.metadata.labels?.['app.kubernetes.io/component'] === component));
  if (!o) throw new Error(`no ${kind}${component ? ` (${component})` : ''} rendered`);
  return o;
};

beforeAll(async () => {
  await ensureHelm((l) => process.stderr.write(`${l}\n`));
}, 15 * 60_000);

it('passes helm lint --strict, with real and with simulated devices', async () => {
  for (const set of [[], SIM, ['--set', 'controller.replicas=3', '--set', 'agent.simulated.enabled=true']]) {
    const { stdout } = await helm(['lint', '--strict', CHART, '--kube-version', KUBE_VERSION, ...set]);
    expect(stdout).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
  }
}, 60_000);

it('values are checked: a typo, a bad number, or no devices at all is refused, naming the key', async () => {
  expect(await templateError('--set', 'controler.replicas=2')).toMatch(/additional properties 'controler' not allowed/);
  expect(await templateError('--set', 'controller.replicas=0')).toMatch(/\/controller\/replicas.*minimum/);
  expect(await templateError('--set', 'agent.digest=md5')).toMatch(/\/agent\/digest/);
  expect(await templateError('--set', 'agent.timeouts.streamIdle=soon')).toMatch(/\/agent\/timeouts\/streamIdle/);
  expect(await templateError('--set', 'agent.acceptDigests={md5}')).toMatch(/\/agent\/acceptDigests/);
  expect(await templateError('--set', 'controller.evacuationMaxParallelTotal=0')).toMatch(/\/controller\/evacuationMaxParallelTotal.*minimum/);
  expect(await templateError('--set', 'agent.simulated.stateSize=lots')).toMatch(/\/agent\/simulated\/stateSize/);
  expect(await templateError('--set', 'agent.kernel.enabled=false')).toMatch(/set agent.kernel.enabled .* or agent.simulated.enabled/);
}, 60_000);

describe('what it renders', () => {
  let real: Obj[];
  let sim: Obj[];
  beforeAll(async () => {
    [real, sim] = await Promise.all([template(), template(...SIM)]);
  }, 60_000);

  it('the controller pod meets restricted Pod Security', () => {
    for (const docs of [real, sim]) {
      const pod = podSpec(find(docs, 'Deployment', 'controller'));
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
      expect(pod.hostNetwork).toBeFalsy();
      for (const c of pod.containers) {
        expect(c.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
      }
      expect((pod.volumes ?? []).every((v) => !v.hostPath)).toBe(true);
    }
  });

  it('the agent is privileged on the host only for real devices; simulated, it is restricted', () => {
    const k = podSpec(find(real, 'DaemonSet', 'agent'));
    expect(k.hostNetwork).toBe(true);
    expect(k.containers.map((c) => c.securityContext?.privileged)).toEqual([true]);
    expect(k.nodeSelector).toEqual({ 'devmig.io/vfio': 'true' });
    expect((k.volumes ?? []).map((v) => v.hostPath?.path).filter(Boolean)).toEqual(['/var/lib/devmig', '/var/lib/kubelet/pod-resources', '/dev', '/sys']);
    // The kubelet's allocations: read-only, the agent's alone (the holder needs none of it).
    expect(k.containers.map((c) => c.volumeMounts?.find((m) => m.name === 'pod-resources'))).toEqual([
      { name: 'pod-resources', mountPath: '/var/lib/kubelet/pod-resources', readOnly: true }, undefined]);
    const s = podSpec(find(sim, 'DaemonSet', 'agent'));
    expect(s.hostNetwork).toBe(false);
    expect(s.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532, seccompProfile: { type: 'RuntimeDefault' } });
    for (const c of s.containers) {
      expect(c.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    }
    expect((s.volumes ?? []).every((v) => !v.hostPath)).toBe(true);
    // With the state in an emptyDir (it goes with the pod anyway), the holder is the pod's second
    // container, and sees the agent's processes.
    expect(s.shareProcessNamespace).toBe(true);
    expect(s.containers.map((c) => c.args?.[0])).toEqual(['agent', 'holder']);
    expect(sim.some((d) => d.metadata.labels?.['app.kubernetes.io/component'] === 'holder')).toBe(false);
    // The agent starts with the Node flags the local environment and the benchmark give it.
    for (const spec of [k, s]) {
      expect(spec.containers[0]!.env?.find((e) => e.name === 'NODE_OPTIONS')?.value).toBe(AGENT_NODE_FLAGS.join(' '));
    }
  });

  it('with the state on the node, the holder is a DaemonSet of its own that upgrades leave running', async () => {
    const onNode = await template(...SIM, '--set', 'agent.simulated.onNode=true');
    for (const [docs, privileged] of [[real, true], [onNode, undefined]] as const) {
      const agent = podSpec(find(docs, 'DaemonSet', 'agent'));
      const holderSet = find(docs, 'DaemonSet', 'holder');
      const holder = podSpec(holderSet);
      // An agent upgrade replaces the agent's pod; the holder's pod, and the devices it holds open, stay.
      expect((holderSet.spec as { updateStrategy: { type: string } }).updateStrategy.type).toBe('OnDelete');
      expect(agent.containers.map((c) => c.args?.[0])).toEqual(['agent']);
      expect(holder.containers.map((c) => c.args)).toEqual([['holder', '--state-dir', '/var/lib/devmig/state']]);
      // Each sees the other's processes (pidfd_getfd, the simulated devices' lock) in the host's PID namespace.
      expect([agent.hostPID, holder.hostPID, agent.shareProcessNamespace]).toEqual([true, true, undefined]);
      expect(holder.automountServiceAccountToken).toBe(false);
      expect(holder.containers[0]!.securityContext?.privileged).toBe(privileged);
      // Both mount the node's state directory, one per node.
      for (const spec of [agent, holder]) {
        expect(spec.volumes?.find((v) => v.name === 'state')?.hostPath).toEqual({ path: '/var/lib/devmig', type: 'DirectoryOrCreate' });
        expect(spec.containers[0]!.volumeMounts?.find((m) => m.name === 'state')).toEqual({ name: 'state', mountPath: '/var/lib/devmig', subPathExpr: '$(NODE_NAME)' });
      }
    }
    // Simulated devices on the node keep the agent restricted otherwise: no privilege, no capabilities.
    const a = podSpec(find(onNode, 'DaemonSet', 'agent'));
    expect(a.hostNetwork).toBe(false);
    expect(a.containers[0]!.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
  });

  it('what the controller and agents make belongs to the release: each names its own ClusterRole, which it may only read', () => {
    const cfg = (component: string, file: string) => parse(find(real, 'ConfigMap', component).data![file]!) as Record<string, unknown>;
    expect(cfg('controller', 'controller.yaml').ownerClusterRole).toBe('devmig-controller');
    expect((cfg('agent', 'agent.yaml').kube as Record<string, unknown>).ownerClusterRole).toBe('devmig-agent');
    for (const name of ['devmig-controller', 'devmig-agent']) {
      const role = real.find((d) => d.kind === 'ClusterRole' && d.metadata.name === name) as Obj & { rules: Array<{ resources: string[]; resourceNames?: string[]; verbs: string[] }> };
      expect(role.rules.filter((r) => r.resources.includes('clusterroles'))).toEqual([{ apiGroups: ['rbac.authorization.k8s.io'], resources: ['clusterroles'], resourceNames: [name], verbs: ['get'] }]);
    }
  });

  it('liveness counts only once the controller and the agent have started (a busy node is no reason to restart them)', () => {
    for (const docs of [real, sim]) {
      for (const [kind, component] of [['Deployment', 'controller'], ['DaemonSet', 'agent']] as const) {
        const main = podSpec(find(docs, kind, component)).containers[0]!;
        expect(main.startupProbe).toMatchObject({ periodSeconds: 2, failureThreshold: 90 });
        expect(main.startupProbe?.httpGet?.port ?? main.startupProbe?.tcpSocket?.port).toBe(main.livenessProbe?.httpGet?.port ?? main.livenessProbe?.tcpSocket?.port);
      }
    }
  });

  it('kubelets sharing a host: the PodResources mount takes each node\'s own directory (subPathExpr)', async () => {
    const docs = await template('--set', 'agent.podResources.withSimulated=true', '--set', 'agent.podResources.dir=/var/lib/devmig-pods',
      '--set-string', 'agent.podResources.subPathExpr=$(NODE_NAME)/kubelet/pod-resources');
    const spec = podSpec(find(docs, 'DaemonSet', 'agent'));
    const mount = spec.containers[0]!.volumeMounts!.find((m) => m.name === 'pod-resources');
    expect(mount).toEqual({ name: 'pod-resources', mountPath: '/var/lib/kubelet/pod-resources', readOnly: true, subPathExpr: '$(NODE_NAME)/kubelet/pod-resources' });
    expect(spec.volumes!.find((v) => v.name === 'pod-resources')?.hostPath).toEqual({ path: '/var/lib/devmig-pods', type: 'Directory' });
    // On a real node there is none: the kubelet's own directory, mounted whole.
    expect(podSpec(find(real, 'DaemonSet', 'agent')).containers[0]!.volumeMounts!.find((m) => m.name === 'pod-resources')?.subPathExpr).toBeUndefined();
  });

  it('its config files are ones the controller and agent accept, and leader election follows replicas', async () => {
    const cfg = (docs: Obj[], component: string, file: string) => parse(find(docs, 'ConfigMap', component).data![file]!) as Record<string, unknown>;
    // The agent's: spare devices and the kubelet's PodResources as the values say.
    expect(parseAgentConfig({ ...cfg(real, 'agent', 'agent.yaml'), node: 'n' })).toMatchObject({
      podResources: { socket: '/var/lib/kubelet/pod-resources/kubelet.sock', resources: {} }, devices: { spare: [] } });
    expect(parseAgentConfig({ ...cfg(sim, 'agent', 'agent.yaml'), node: 'n' })).toMatchObject({ devices: { spare: ['*'] } });
    expect(parseAgentConfig({ ...cfg(sim, 'agent', 'agent.yaml'), node: 'n' }).podResources).toBeUndefined();
    const custom = await template('--set', 'agent.spareDevices={pci-0000-3b-00-1}', '--set', 'agent.podResources.resources.intel\\.com/sriov=pciAddress');
    expect(parseAgentConfig({ ...cfg(custom, 'agent', 'agent.yaml'), node: 'n' })).toMatchObject({
      podResources: { resources: { 'intel.com/sriov': 'pciAddress' } }, devices: { spare: ['pci-0000-3b-00-1'] } });
    const one = controllerConfigSchema.parse(cfg(real, 'controller', 'controller.yaml'));
    expect(one).toMatchObject({ namespace: 'devmig-system', pki: { agentServiceAccount: 'devmig-agent', signerName: 'devmig.io/agent' }, leaderElection: { enabled: false },
      evacuation: { maxParallelTotal: 8 } });
    expect(controllerConfigSchema.parse(cfg(await template('--set', 'controller.evacuationMaxParallelTotal=3'), 'controller', 'controller.yaml')).evacuation.maxParallelTotal).toBe(3);
    expect(controllerConfigSchema.parse(cfg(await template('--set', 'controller.replicas=2'), 'controller', 'controller.yaml')).leaderElection.enabled).toBe(true);
    const agent = parseAgentConfig({ ...cfg(real, 'agent', 'agent.yaml'), node: 'node-1' });
    expect(agent).toMatchObject({ holder: 'external', tls: { kubernetes: { namespace: 'devmig-system' } }, devices: { kernel: { sysfs: '/sys' } } });
    const simAgent = parseAgentConfig({ ...cfg(sim, 'agent', 'agent.yaml'), node: 'node-1' });
    expect(simAgent.devices.kernel).toBeUndefined();
    expect(simAgent.devices.simulated?.devices.map((d) => d.name)).toEqual(['sim-0', 'sim-1']);
    // The agents' timeouts and accepted digests come from the values.
    expect(agent.timeouts).toEqual({ handshake: 10_000, unauthenticated: 10_000, requestBody: 10_000, streamIdle: 30_000 });
    expect(agent.acceptDigests).toBeUndefined();
    const tuned = parseAgentConfig({ ...cfg(await template('--set', 'agent.timeouts.streamIdle=2m', '--set', 'agent.acceptDigests={blake3,sha256}'), 'agent', 'agent.yaml'), node: 'node-1' });
    expect(tuned).toMatchObject({ timeouts: { streamIdle: 120_000 }, acceptDigests: ['blake3', 'sha256'] });
  });

  it('every object carries the common labels, and the agent may only be its own node', () => {
    for (const o of [...real, ...sim]) {
      expect(o.metadata.labels).toMatchObject({ 'app.kubernetes.io/name': 'devmig', 'app.kubernetes.io/instance': 'devmig', 'app.kubernetes.io/managed-by': 'Helm' });
    }
    const vap = find(real, 'ValidatingAdmissionPolicy');
    expect((vap.spec as { matchConditions: Array<{ expression: string }> }).matchConditions[0]!.expression).toContain("'system:serviceaccount:devmig-system:devmig-agent'");
    const agentRole = real.find((d) => d.kind === 'ClusterRole' && d.metadata.name === 'devmig-agent')!;
    expect(JSON.stringify(agentRole)).not.toMatch(/devicemigrations|secrets|"\*"/);
  });
});

it('the chart\'s CRDs are the generated ones', async () => {
  const files = crdFiles();
  expect((await readdir(join(CHART, 'crds'))).sort()).toEqual(Object.keys(files).sort());
  for (const [f, text] of Object.entries(files)) expect(await readFile(join(CHART, 'crds', f), 'utf8')).toBe(text);
});

it('deploy/ is what `npm run render` writes', async () => {
  for (const f of Object.keys(RENDERINGS)) expect(await readFile(join(DEPLOY, f), 'utf8')).toBe(await render(f));
}, 60_000);

describe('on a real API server', () => {
  let dir: string;
  let api: RunningApiserver;
  let kube: Kube;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'devmig-chart-'));
    api = await startApiserver({ dataDir: join(dir, 'apiserver') });
    kube = Kube.fromFile(api.kubeconfig);
  }, 10 * 60_000);
  afterAll(async () => {
    await api?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('the API server accepts every object of the simulated rendering before install (server-side dry run)', async () => {
    const docs = parseAllDocuments(await readFile(join(DEPLOY, 'devmig-simulated.yaml'), 'utf8')).map((d) => d.toJS() as Obj).filter(Boolean);
    const objects = k8s.KubernetesObjectApi.makeApiClient(kube.config);
    await kube.core.createNamespace({ body: { metadata: { name: 'devmig-system' } } }).catch((e: { code?: number }) => {
      if (e.code !== 409) throw e;
    });
    for (const o of docs) {
      // Server-side apply in dry-run: the whole object validated by the server, nothing stored.
      await objects.patch(o, undefined, 'All', 'devmig-test', true, k8s.PatchStrategy.ServerSideApply);
    }
    expect(docs.length).toBeGreaterThan(10);
  }, 60_000);
  it('helm install puts the CRDs and every object in place', async () => {
    const { stdout } = await helm(['install', 'devmig', CHART, '--namespace', 'devmig-system', '--create-namespace', '--kubeconfig', api.kubeconfig]);
    expect(stdout).toMatch(/STATUS: deployed/);
    const apps = kube.config.makeApiClient(k8s.AppsV1Api);
    expect((await apps.readNamespacedDeployment({ name: 'devmig-controller', namespace: 'devmig-system' })).spec?.replicas).toBe(1);
    expect((await apps.readNamespacedDaemonSet({ name: 'devmig-agent', namespace: 'devmig-system' })).spec?.template.spec?.hostNetwork).toBe(true);
    await kube.custom.getClusterCustomObject({ group: 'apiextensions.k8s.io', version: 'v1', plural: 'customresourcedefinitions', name: 'devicemigrations.devmig.io' });
    const vap = await kube.custom.getClusterCustomObject({ group: 'admissionregistration.k8s.io', version: 'v1', plural: 'validatingadmissionpolicies', name: 'devmig-agent-own-devicenode' }) as { status?: { typeChecking?: { expressionWarnings?: unknown[] } } };
    expect(vap).toBeTruthy();
  }, 120_000);
});
