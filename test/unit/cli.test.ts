import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STATE_NAMES } from '../../src/vfio/uapi.js';
import { devmigBin, lastJson, repoRoot, runBin, runCli } from '../helpers/cli.js';

describe('devmig fsm (the CLI contract)', () => {
  it('path -o json prints exactly the path and exits 0 (a real process)', async () => {
    const r = await runBin(['fsm', 'path', '--from', 'RUNNING', '--to', 'STOP_COPY', '--flags', 'STOP_COPY,P2P', '-o', 'json']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('{"path":["RUNNING","RUNNING_P2P","STOP","STOP_COPY"]}');
  });

  it('a refused path exits 1 with {"error": why}', async () => {
    const r = await runBin(['fsm', 'path', '--from', 'STOP_COPY', '--to', 'PRE_COPY', '--flags', 'STOP_COPY,PRE_COPY', '-o', 'json']);
    expect(r.code).toBe(1);
    expect(lastJson(r.stdout)).toEqual({ error: expect.stringMatching(/STOP_COPY -> PRE_COPY refused/) as unknown });
  });

  it('a state the device lacks is refused with the missing flag', async () => {
    const r = await runCli(['fsm', 'path', '--from', 'RUNNING', '--to', 'RUNNING_P2P', '--flags', 'STOP_COPY', '-o', 'json']);
    expect(r.code).toBe(1);
    expect(lastJson(r.stdout)).toEqual({ error: expect.stringMatching(/lack P2P/) as unknown });
  });

  it('bad input names the option and the fix', async () => {
    const a = await runCli(['fsm', 'path', '--from', 'RUNING', '--to', 'STOP', '-o', 'json']);
    expect(a.code).toBe(1);
    expect(lastJson(a.stdout)).toEqual({ error: expect.stringMatching(/unknown VFIO migration state "RUNING": expected one of ERROR, STOP/) as unknown });
    const b = await runCli(['fsm', 'table', '--flags', 'P2P']);
    expect(b.code).toBe(1);
    expect(b.stderr).toMatch(/--flags: migration flags must include STOP_COPY/);
    const c = await runCli(['fsm', 'table', '--flags', 'STOP_COPY,FAST']);
    expect(c.stderr).toMatch(/unknown migration flag "FAST"/);
    const d = await runCli(['fsm', 'path', '--from', 'RUNNING']);
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/--to/);
  });

  it('table -o json has all 8x8 pairs, null where refused', async () => {
    const r = await runCli(['fsm', 'table', '--flags', 'STOP_COPY,P2P,PRE_COPY', '-o', 'json']);
    expect(r.code).toBe(0);
    const t = lastJson(r.stdout) as Record<string, Record<string, string[] | null>>;
    expect(Object.keys(t)).toEqual([...STATE_NAMES]);
    for (const from of STATE_NAMES) expect(Object.keys(t[from]!)).toEqual([...STATE_NAMES]);
    expect(t.RUNNING!.STOP_COPY).toEqual(['RUNNING', 'RUNNING_P2P', 'STOP', 'STOP_COPY']);
    expect(t.STOP_COPY!.PRE_COPY).toBeNull();
    expect(t.ERROR!.RUNNING).toBeNull();
    expect(t.STOP!.STOP).toEqual(['STOP']);
  });

  it('prints tables for people', async () => {
    const r = await runCli(['fsm', 'table', '--flags', 'STOP_COPY']);
    expect(r.stdout).toMatch(/^FROM\s+TO\s+ARCS\s+PATH$/m);
    expect(r.stdout).toMatch(/^RUNNING\s+STOP_COPY\s+2\s+RUNNING -> STOP -> STOP_COPY$/m);
    expect(r.stdout).toMatch(/^RUNNING\s+PRE_COPY\s+-\s+refused/m);
    const p = await runCli(['fsm', 'path', '--from', 'RUNNING', '--to', 'STOP_COPY']);
    expect(p.stdout).toMatch(/RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY\n\(3 arcs/);
  });

  it('every subcommand has --help', async () => {
    for (const args of [['--help'], ['fsm', '--help'], ['fsm', 'path', '--help'], ['sim', 'digest', '--help'], ['device', 'probe', '--help'], ['demo', '--help']]) {
      const r = await runCli(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage: devmig/);
    }
  });
});

describe('devmig sim and device probe', () => {
  let dir: string;
  beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'devmig-cli-')); });
  afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

  it('creates a device, probes it and prints its digest', async () => {
    expect((await runCli(['sim', 'create', '--dir', dir, '--device', 'sim-0', '--size', '1Mi'])).code).toBe(0);
    const probe = await runCli(['device', 'probe', `sim:${dir}/sim-0`, '-o', 'json']);
    expect(probe.code).toBe(0);
    expect(lastJson(probe.stdout)).toMatchObject({ flags: ['STOP_COPY', 'P2P', 'PRE_COPY'], state: 'RUNNING' });
    const d = await runCli(['sim', 'digest', '--dir', dir, '--device', 'sim-0', '-o', 'json']);
    expect(lastJson(d.stdout)).toMatchObject({ device: 'sim-0', bytes: 1048576, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown });
  });

  it('a device without migration support gets a clear message, not a stack', async () => {
    expect((await runCli(['sim', 'create', '--dir', dir, '--device', 'plain', '--size', '1Mi', '--no-migration'])).code).toBe(0);
    const r = await runCli(['device', 'probe', `sim:${dir}/plain`]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no migration support.*\(ENOTTY\)/);
    expect(r.stderr).not.toMatch(/at .*\.ts:\d+/);
  });

  it('digest of a missing device says where it looked', async () => {
    const r = await runCli(['sim', 'digest', '--dir', dir, '--device', 'nope']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no simulated device "nope"/);
  });

  it('demo migrates and checks the digest', async () => {
    const r = await runCli(['demo', '--dir', dir, '--size', '2Mi', '-o', 'json']);
    expect(r.code).toBe(0);
    const out = lastJson(r.stdout) as { intact: boolean; bytes: number; sourceSha256: string; targetSha256: string; arcs: unknown[] };
    expect(out.intact).toBe(true);
    expect(out.targetSha256).toBe(out.sourceSha256);
    expect(out.bytes).toBeGreaterThan(2 * 1048576);
    expect((out.arcs as Array<{ device: string; from: string; to: string }>).map((a) => `${a.device}:${a.from}>${a.to}`)).toEqual([
      'target:RUNNING>RUNNING_P2P', 'target:RUNNING_P2P>STOP', 'target:STOP>RESUMING',
      'source:RUNNING>RUNNING_P2P', 'source:RUNNING_P2P>STOP', 'source:STOP>STOP_COPY',
      'target:RESUMING>STOP', 'target:STOP>RUNNING_P2P', 'target:RUNNING_P2P>RUNNING',
    ]);
  });
});

describe('what a command loads', () => {
  const hook = `${repoRoot}test/helpers/no-kube-client.mjs`;
  const run = (...args: string[]) => new Promise<{ code: number; stderr: string }>((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', hook, devmigBin, ...args]);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stderr }));
  });

  it('the agent and the fsm commands never load the Kubernetes client (~50 MB of RSS); local does', async () => {
    await expect(run('agent', '--help')).resolves.toMatchObject({ code: 0 });
    await expect(run('fsm', 'path', '--from', 'RUNNING', '--to', 'STOP')).resolves.toMatchObject({ code: 0 });
    // The hook works: a command that needs the client fails on it.
    await expect(run('local', 'down', '--dir', '/nonexistent')).resolves.toMatchObject({ stderr: expect.stringMatching(/the Kubernetes client was imported/) as unknown });
  });
});

describe('devmig local: options refused before anything starts', () => {
  it.each([
    [['--pods', '--kernel'], /--pods and --kernel: choose one/],
    [['--pods', '--nodes', '9'], /--nodes 9: the pods environment runs at most 8 nodes/],
    [['--kernel', 'sparc'], /--kernel sparc: give debian .* or cdev/],
    [['--nodes', '1'], /--nodes 1: give a whole number from 2 to 50/],
  ])('local up %p', async (args, why) => {
    const dir = `/nonexistent/devmig-cli-${process.pid}`;
    const r = await runCli(['local', 'up', '--dir', dir, ...args]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(why);
  });
});
