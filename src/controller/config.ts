/** The controller's configuration file (YAML or JSON). */
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parse } from 'yaml';
import { z } from 'zod';

export const controllerConfigSchema = z.strictObject({
  kubeconfig: z.string().optional().describe('unset: in-cluster, or $KUBECONFIG'),
  /** Where the lease and the PKI's Secret and ConfigMap live; in a pod, its own namespace. */
  namespace: z.string().min(1).default(process.env.POD_NAMESPACE ?? 'default'),
  /** Certificate files and a ticket secret file, or `pki` to let the controller run the PKI itself. */
  tls: z.strictObject({ ca: z.string(), cert: z.string(), key: z.string() }).optional(),
  /** 32+ random bytes; migration tickets are derived from it (HMAC), so no ticket is ever stored. */
  ticketSecretFile: z.string().optional(),
  /** The controller keeps a CA and the ticket key in a Secret, and signs agents' CSRs (see pki.ts). */
  pki: z.strictObject({
    secretName: z.string().default('devmig-pki'),
    caConfigMapName: z.string().default('devmig-ca'),
    signerName: z.string().regex(/^[a-z0-9.-]+\/[a-z0-9.-]+$/, 'must look like example.com/name').default('devmig.io/agent'),
    agentServiceAccount: z.string().default('devmig-agent'),
  }).optional(),
  /**
   * The release's ClusterRole (the chart names the controller's own): the PKI's Secret and ConfigMap
   * and the Lease name it as their owner, so `helm uninstall` takes them too (kube/owner.ts).
   */
  ownerClusterRole: z.string().min(1).optional(),
  workers: z.number().int().positive().default(4),
  /** DeviceEvacuations: how many of their migrations may run at once, over all evacuations. */
  evacuation: z.strictObject({ maxParallelTotal: z.number().int().min(1).max(1024).default(8) }).prefault({}),
  metrics: z.strictObject({ host: z.string().default('0.0.0.0'), port: z.number().int().min(0).max(65535).default(8080) }).prefault({}),
  leaderElection: z.strictObject({
    enabled: z.boolean().default(true),
    /** Default: the controller's `namespace`. */
    namespace: z.string().optional(),
    name: z.string().default('devmig-controller'),
    leaseSeconds: z.number().int().positive().default(15),
    identity: z.string().default(`${hostname()}-${process.pid}`),
  }).prefault({}),
}).superRefine((c, ctx) => {
  if (c.pki && (c.tls || c.ticketSecretFile)) {
    ctx.addIssue({ code: 'custom', path: ['pki'], message: 'set either pki (the controller runs the PKI) or tls + ticketSecretFile (files you manage), not both' });
  } else if (!c.pki && !(c.tls && c.ticketSecretFile)) {
    ctx.addIssue({ code: 'custom', path: [c.tls ? 'ticketSecretFile' : 'tls'], message: 'without pki, both tls (ca, cert, key files) and ticketSecretFile are required' });
  }
});
export type ControllerConfig = z.infer<typeof controllerConfigSchema>;

export async function loadControllerConfig(path: string): Promise<ControllerConfig> {
  const r = controllerConfigSchema.safeParse(parse(await readFile(path, 'utf8')));
  if (!r.success) throw new Error(`${path} is invalid:\n${z.prettifyError(r.error)}`);
  return r.data;
}
