/**
 * What `devmig local` needs of the pods environment, in the shapes the light environment's commands
 * already use (a kubeconfig, each node's simulated devices), so `local demo`, `local down` and
 * `sim digest --node` work on either.
 */
import { resolve } from 'node:path';
import { podsOwner, podsUp, readPods, type PodsState } from './cluster.js';
import { podsDown } from './down.js';

export interface PodsAgents {
  readonly agents: Array<{ node: string; simDir: string }>;
}

const agentsOf = (s: PodsState): PodsAgents['agents'] => s.nodes.map((n) => ({ node: n.name, simDir: n.simDir }));

export async function podsUpCli(o: { dir: string; nodes: number; devices: number; stateSize: string }, say: (t: string) => void): Promise<PodsState & PodsAgents> {
  try {
    const s = await podsUp(o, say);
    return { ...s, agents: agentsOf(s) };
  } catch (e) {
    // What did start stays for a look; down removes it, also half-way.
    const dir = resolve(o.dir);
    throw new Error(`${(e as Error).message}\nthe logs are in ${dir}/logs; \`devmig local down --dir ${dir}\` removes what was started`);
  }
}

/** The nodes of the pods environment in `dir`, if it has one. */
export async function podsAgents(dir: string): Promise<PodsAgents | undefined> {
  const s = await readPods(dir);
  return s ? { agents: agentsOf(s) } : undefined;
}

/** Tears down the pods environment of `dir`, if it has one (or owns the machine's); says whether it did. */
export async function podsDownIfUp(dir: string, say: (t: string) => void): Promise<boolean> {
  if (!(await readPods(dir)) && (await podsOwner()) !== resolve(dir)) return false;
  await podsDown(dir, say);
  return true;
}
