/** The controller's configuration file (YAML or JSON). */
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parse } from 'yaml';
import { z } from 'zod';

export const controllerConfigSchema = z.strictObject({
  kubeconfig: z.string().optional().describe('unset: in-cluster, or $KUBECONFIG'),
  tls: z.strictObject({ ca: z.string(), cert: z.string(), key: z.string() }),
  /** 32+ random bytes; migration tickets are derived from it (HMAC), so no ticket is ever stored. */
  ticketSecretFile: z.string(),
  workers: z.number().int().positive().default(4),
  metrics: z.strictObject({ host: z.string().default('0.0.0.0'), port: z.number().int().min(0).max(65535).default(8080) }).prefault({}),
  leaderElection: z.strictObject({
    enabled: z.boolean().default(true),
    namespace: z.string().default('default'),
    name: z.string().default('devmig-controller'),
    leaseSeconds: z.number().int().positive().default(15),
    identity: z.string().default(`${hostname()}-${process.pid}`),
  }).prefault({}),
});
export type ControllerConfig = z.infer<typeof controllerConfigSchema>;

export async function loadControllerConfig(path: string): Promise<ControllerConfig> {
  const r = controllerConfigSchema.safeParse(parse(await readFile(path, 'utf8')));
  if (!r.success) throw new Error(`${path} is invalid:\n${z.prettifyError(r.error)}`);
  return r.data;
}
