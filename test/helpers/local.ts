/**
 * A local control plane for one test file: kube-apiserver, controller and agents with simulated
 * devices (src/local/env.ts), up before the file's tests and down after them (DEVMIG_KEEP=1 keeps
 * its directory for a look afterwards).
 */
import { access, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kube } from '../../src/kube/kube.js';
import { localDown, localUp, type LocalOptions, type LocalState } from '../../src/local/env.js';

export interface LocalCluster {
  readonly env: LocalState;
  readonly kube: Kube;
  /** Where a node's simulated devices keep their state. */
  simDir(node: string): string;
}

export function localCluster(name: string, o: Omit<LocalOptions, 'dir'>): LocalCluster {
  let dir = '';
  let env: LocalState | undefined;
  let kube: Kube | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `devmig-${name}-`));
    env = await localUp({ dir, ...o }, () => undefined);
    kube = Kube.fromFile(env.kubeconfig);
  }, 20 * 60_000);
  afterAll(async () => {
    const memory = env?.deviceMemory;
    await localDown(dir, () => undefined);
    // The simulated devices' memory (tmpfs) goes with the environment, as a machine's does when off.
    if (memory) await expect(access(memory)).rejects.toMatchObject({ code: 'ENOENT' });
    if (!process.env.DEVMIG_KEEP) await rm(dir, { recursive: true, force: true });
  }, 60_000);
  return {
    get env() { return env!; },
    get kube() { return kube!; },
    simDir: (node) => env!.agents.find((a) => a.node === node)!.simDir,
  };
}
