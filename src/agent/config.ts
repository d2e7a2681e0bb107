/** The agent's configuration file (YAML or JSON), validated field by field. */
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseDuration, parseQuantity } from '../api/quantity.js';
import { DEFAULT_DIGEST, DIGEST_ALGORITHMS, unavailable } from '../relay/digest.js';
import { FLAG_NAMES, MigFlag, type MigFlagName } from '../vfio/uapi.js';
import { objectName } from '../agentapi/types.js';
import { podResourcesConfigSchema } from '../kubelet/allocations.js';

const quantity = z.union([z.string(), z.number()]).transform((v, ctx) => {
  try {
    return parseQuantity(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});

/** A Go duration ("10s", "500ms"), in milliseconds; a positive one. */
const duration = z.string().transform((v, ctx) => {
  try {
    const ms = parseDuration(v);
    if (ms > 0) return ms;
    ctx.addIssue({ code: 'custom', message: `"${v}" must be longer than 0` });
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
  }
  return z.NEVER;
});

const digestAlgorithm = z.enum(DIGEST_ALGORITHMS)
  .superRefine((d, ctx) => { const why = unavailable(d); if (why) ctx.addIssue({ code: 'custom', message: why }); });

const simDevice = z.strictObject({
  name: objectName,
  stateSize: quantity.default(64 * 2 ** 20),
  pageSize: quantity.optional(),
  flags: z.array(z.enum(FLAG_NAMES as unknown as [MigFlagName, ...MigFlagName[]])).default(['STOP_COPY', 'P2P', 'PRE_COPY'])
    .transform((names) => names.reduce((m, n) => m | MigFlag[n], 0)),
  dirtyRate: quantity.default(0),
});

export const agentConfigSchema = z.strictObject({
  node: objectName,
  listen: z.strictObject({
    host: z.string().default('0.0.0.0'),
    port: z.number().int().min(0).max(65535).default(9443),
  }).prefault({}),
  /** The endpoint other agents and the controller use; default https://<listen.host>:<port>. */
  advertise: z.string().regex(/^https:\/\/[^/]+$/, 'must be https://HOST:PORT').optional(),
  stateDir: z.string().min(1),
  /** Certificate files, or a certificate asked of the cluster's CSR API (the controller signs it). */
  tls: z.union([
    z.strictObject({ ca: z.string(), cert: z.string(), key: z.string() }),
    z.strictObject({
      kubernetes: z.strictObject({
        namespace: z.string().min(1).describe('where the controller publishes the CA ConfigMap'),
        caConfigMapName: z.string().default('devmig-ca'),
        signerName: z.string().default('devmig.io/agent'),
        expirationSeconds: z.number().int().min(600).default(7 * 86_400),
      }),
    }),
  ]),
  /** The digest this agent sends its streams with. */
  digest: digestAlgorithm.default(DEFAULT_DIGEST),
  /**
   * The digests a stream to this agent may carry (unset: `digest` alone). The source picks its
   * digest; the target decides what it trusts: crc32 catches accidents only.
   */
  acceptDigests: z.array(digestAlgorithm).min(1).optional(),
  /**
   * How long a peer may keep the agent waiting. A TLS handshake; a session that shows no client
   * certificate (it can reach the health endpoints only, then it is closed); a request body; a data
   * stream that moves nothing (aborted with StreamStalled, its session freed). streamIdle must exceed
   * the time a target needs to write one flow-control window (16 MiB) to its device.
   */
  timeouts: z.strictObject({
    handshake: duration.default(10_000),
    unauthenticated: duration.default(10_000),
    requestBody: duration.default(10_000),
    streamIdle: duration.default(30_000),
  }).prefault({}),
  /**
   * Keep device fds in a separate holder process, so an agent restart does not reset devices: true
   * starts one if none runs; `external` waits for one started beside the agent (a pod's second
   * container, which outlives the agent's); false keeps none.
   */
  holder: z.union([z.boolean(), z.literal('external')]).default(true),
  /** Concurrent send+receive sessions this node accepts. */
  maxSessions: z.number().int().positive().default(4),
  /** How long a graceful shutdown waits for in-flight sessions. */
  drainSeconds: z.number().nonnegative().default(30),
  /** Publish this node's DeviceNode to Kubernetes (unset: run without a cluster). */
  kube: z.strictObject({
    kubeconfig: z.string().optional(),
    heartbeatSeconds: z.number().positive().default(5),
    /** The release's ClusterRole (the chart names the agent's): the DeviceNode names it as its owner, so `helm uninstall` takes it too. */
    ownerClusterRole: z.string().min(1).optional(),
  }).optional(),
  /**
   * Read the kubelet's PodResources API: a device the kubelet gave to a pod is never a target (unset:
   * no kubelet to ask, as in the local environment). The chart mounts the socket's directory.
   */
  podResources: podResourcesConfigSchema.extend({
    /** How often to ask the kubelet (List). */
    intervalSeconds: z.number().positive().max(300).default(5),
  }).optional(),
  devices: z.strictObject({
    /**
     * Devices known to hold nothing when the agent first sees them: free to receive. Any other device
     * found then may hold a workload's state (a VM's), so it is never a target until released.
     * Names, or "*" for every device (the local environment's simulated ones).
     */
    spare: z.array(z.union([z.literal('*'), objectName])).default([]),
    simulated: z.strictObject({ dir: z.string(), devices: z.array(simDevice) }).optional(),
    kernel: z.strictObject({
      sysfs: z.string().default('/sys'),
      dev: z.string().default('/dev'),
      libc: z.string().optional(),
      /** Only these devices (names such as mdev-<uuid>, or addresses): the rest belong to someone else. */
      include: z.array(z.string().min(1)).min(1).optional(),
    }).optional(),
  }).prefault({}),
});

export type AgentConfig = z.infer<typeof agentConfigSchema>;
export type SimDeviceConfig = z.infer<typeof simDevice>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

export function parseAgentConfig(raw: unknown, source = 'agent config'): AgentConfig {
  const r = agentConfigSchema.safeParse(raw);
  if (!r.success) throw new ConfigError(`${source} is invalid:\n${z.prettifyError(r.error)}`);
  const names = new Set<string>();
  for (const d of r.data.devices.simulated?.devices ?? []) {
    if (names.has(d.name)) throw new ConfigError(`${source}: devices.simulated.devices has "${d.name}" twice; device names must be unique`);
    names.add(d.name);
  }
  if ('kubernetes' in r.data.tls && !r.data.kube) {
    throw new ConfigError(`${source}: tls.kubernetes asks the cluster for a certificate, so \`kube\` must be set too (\`kube: {}\` for in-cluster)`);
  }
  return r.data;
}

/** Reads the file; `overrides` (from flags) replace its top-level fields and are validated with it. */
export async function loadAgentConfig(path: string, overrides: Record<string, unknown> = {}): Promise<AgentConfig> {
  const text = await readFile(path, 'utf8');
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`${path} is not valid YAML or JSON: ${(e as Error).message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError(`${path}: expected a mapping of settings`);
  return parseAgentConfig({ ...raw, ...overrides }, path);
}

/**
 * Node flags the agent process starts with (the chart sets them as NODE_OPTIONS). A 1 MiB young
 * generation: the relay receives a stream as 16 KiB buffers, and with V8's default semi-space their
 * memory lived on until a late scavenge, which took the target agent's RSS from ~95 to ~175 MB while
 * it streamed (bench:relay, 1 GiB). They take effect at start only (v8.setFlagsFromString is too late).
 */
export const AGENT_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1'];
