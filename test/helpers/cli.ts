import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/main.js';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const devmigBin = `${repoRoot}bin/devmig.js`;

export interface CliRun { code: number; stdout: string; stderr: string }

/** Runs the CLI in this process (fast, for contracts). */
export async function runCli(args: string[]): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { out: (t) => { stdout += t.endsWith('\n') ? t : `${t}\n`; }, err: (t) => { stderr += t.endsWith('\n') ? t : `${t}\n`; } });
  return { code, stdout, stderr };
}

/** Runs the built `devmig` executable as a real process (npm test builds dist/ first). */
export function runBin(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return runScript(devmigBin, args, env);
}

/** Runs a built script (a path under the repository) as a real process. */
export function runScript(path: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

export function lastJson(stdout: string): unknown {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? 'null');
}
