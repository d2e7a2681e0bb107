/**
 * The install's identities on the local control plane, as on a real cluster: the namespace, the
 * ServiceAccounts, RBAC and admission policy from deploy/devmig.yaml (rendered from the Helm chart),
 * and ServiceAccount tokens from the TokenRequest API — an agent's bound to its Node object, as a
 * kubelet binds a pod's token to the pod and its node. The controller and agents then run on those
 * tokens, not on the admin's certificate, so every local run proves the chart's RBAC is enough.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, stringify } from 'yaml';
import type { Kube } from '../kube/kube.js';

export const INSTALL_MANIFEST = fileURLToPath(new URL('../../deploy/devmig.yaml', import.meta.url));

/** What the local control plane takes from the install: who exists and what they may do. */
const PLURALS: Record<string, string> = {
  Namespace: 'namespaces', ServiceAccount: 'serviceaccounts', ClusterRole: 'clusterroles', ClusterRoleBinding: 'clusterrolebindings',
  Role: 'roles', RoleBinding: 'rolebindings', ValidatingAdmissionPolicy: 'validatingadmissionpolicies',
  ValidatingAdmissionPolicyBinding: 'validatingadmissionpolicybindings',
};
const IDENTITY_KINDS = new Set(Object.keys(PLURALS));

export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [k: string]: unknown;
}

export interface InstallIdentity {
  readonly namespace: string;
  readonly controllerServiceAccount: string;
  readonly agentServiceAccount: string;
  readonly objects: Manifest[];
}

export async function readInstallIdentity(path = INSTALL_MANIFEST): Promise<InstallIdentity> {
  const docs = parseAllDocuments(await readFile(path, 'utf8')).map((d) => d.toJS() as Manifest | null).filter((d): d is Manifest => Boolean(d?.kind));
  const objects = docs.filter((d) => IDENTITY_KINDS.has(d.kind));
  const sa = (component: string) => {
    const found = objects.find((o) => o.kind === 'ServiceAccount' && o.metadata.labels?.['app.kubernetes.io/component'] === component);
    if (!found) throw new Error(`${path} has no ServiceAccount labelled app.kubernetes.io/component=${component}; run \`npm run render\``);
    return found;
  };
  const controller = sa('controller');
  return { namespace: controller.metadata.namespace ?? 'default', controllerServiceAccount: controller.metadata.name, agentServiceAccount: sa('agent').metadata.name, objects };
}

/** Creates each object, or replaces it when it exists (so `local up` twice converges). */
export async function applyObjects(kube: Kube, objects: Manifest[]): Promise<void> {
  // `helm template` renders no Namespace (helm install --create-namespace makes it): make the ones used.
  const namespaces = new Set(objects.map((o) => o.metadata.namespace).filter((n): n is string => Boolean(n)));
  for (const name of namespaces) {
    if (!objects.some((o) => o.kind === 'Namespace' && o.metadata.name === name)) await ignore409(kube.core.createNamespace({ body: { metadata: { name } } }));
  }
  for (const o of objects) {
    if (o.kind === 'Namespace') {
      await ignore409(kube.core.createNamespace({ body: o }));
    } else if (o.kind === 'ServiceAccount') {
      await ignore409(kube.core.createNamespacedServiceAccount({ namespace: o.metadata.namespace ?? 'default', body: o }));
    } else {
      // Everything else goes through as plain JSON: no typed model can drop a field it does not know.
      const [group, version] = o.apiVersion.split('/') as [string, string];
      const plural = PLURALS[o.kind]!;
      const ns = o.metadata.namespace;
      try {
        if (ns) await kube.custom.createNamespacedCustomObject({ group, version, namespace: ns, plural, body: o });
        else await kube.custom.createClusterCustomObject({ group, version, plural, body: o });
      } catch (e) {
        if ((e as { code?: number }).code !== 409) throw e;
        const at = { group, version, plural, name: o.metadata.name };
        const cur = (ns ? await kube.custom.getNamespacedCustomObject({ ...at, namespace: ns }) : await kube.custom.getClusterCustomObject(at)) as Manifest;
        const body = { ...o, metadata: { ...o.metadata, resourceVersion: (cur.metadata as { resourceVersion?: string }).resourceVersion } };
        if (ns) await kube.custom.replaceNamespacedCustomObject({ ...at, namespace: ns, body });
        else await kube.custom.replaceClusterCustomObject({ ...at, body });
      }
    }
  }
}

/**
 * A token of `serviceAccount`, bound to a Node when `node` is given: the API server then tells every
 * request's node name (userInfo.extra authentication.kubernetes.io/node-name), which the CSR approval
 * and the DeviceNode admission policy rely on.
 */
export async function serviceAccountToken(kube: Kube, namespace: string, serviceAccount: string, node?: string, seconds = 7 * 86_400): Promise<string> {
  let boundObjectRef;
  if (node) {
    const n = await kube.core.readNode({ name: node });
    boundObjectRef = { apiVersion: 'v1', kind: 'Node', name: node, uid: n.metadata!.uid! };
  }
  const r = await kube.core.createNamespacedServiceAccountToken({ name: serviceAccount, namespace, body: {
    spec: { audiences: [], expirationSeconds: seconds, ...(boundObjectRef ? { boundObjectRef } : {}) },
  } });
  if (!r.status?.token) throw new Error(`TokenRequest for ${namespace}/${serviceAccount} returned no token`);
  return r.status.token;
}

/** The admin kubeconfig's cluster with a bearer token as the user. */
export async function tokenKubeconfig(admin: Kube, token: string, user: string, out: string): Promise<string> {
  const cluster = admin.config.getCurrentCluster()!;
  const doc = {
    apiVersion: 'v1', kind: 'Config', 'current-context': user,
    clusters: [{ name: cluster.name, cluster: { server: cluster.server, ...(cluster.caData ? { 'certificate-authority-data': cluster.caData } : {}), ...(cluster.caFile ? { 'certificate-authority': cluster.caFile } : {}) } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: user, context: { cluster: cluster.name, user } }],
  };
  await writeFile(out, stringify(doc), { mode: 0o600 });
  return out;
}

async function ignore409(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    if ((e as { code?: number }).code !== 409) throw e;
  }
}
