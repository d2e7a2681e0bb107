/**
 * The source role: move the device to STOP_COPY (or PRE_COPY) and stream its data_fd to the target
 * agent in the background; report progress; never decide on its own to run the device again once
 * every byte has left (the target may then commit; only the controller knows).
 */
import { RelayError } from '../relay/errors.js';
import type { ClientHttp2Session } from 'node:http2';
import { connectTarget, sendStream, SendFailure } from '../relay/sender.js';
import type { MigrationDevice, SaveStream, SetStateResult } from '../vfio/device.js';
import type { SendRequest } from '../agentapi/types.js';
import { arcsReply, claim, deviceOf, once, type AgentContext, type Reply } from './context.js';
import { AgentError } from './errors.js';
import { limitSessions } from './target.js';
import { deferred, finish, type SendSession } from './sessions.js';
import type { sendRequest } from '../agentapi/types.js';
import type { z } from 'zod';

type Send = z.output<typeof sendRequest>;

/** How long the source waits for the target agent's TLS handshake before it gives up (device untouched). */
const CONNECT_TIMEOUT_MS = 10_000;

export async function startSend(ctx: AgentContext, device: string, req: Send): Promise<Reply> {
  const d = deviceOf(ctx, device);
  claim(ctx, device, req.migration);
  return once(ctx, device, req.migration, req.op, req, () => d.exclusive(async () => {
    limitSessions(ctx);
    await ctx.journal.step(device, { migration: req.migration, role: 'source', step: 'send:open' });
    // The target is reached before the device stops: an unreachable one costs no downtime (the
    // device never stopped), and the TLS handshake is no part of the downtime.
    // The target's identity is checked in the handshake: a peer that is not the agent of
    // req.target.node gets nothing, not a byte of the device's state.
    let link: ClientHttp2Session;
    try {
      link = await connectTarget(req.target.endpoint, req.target.node, ctx.tls, AbortSignal.timeout(CONNECT_TIMEOUT_MS));
    } catch (e) {
      await ctx.journal.step(device, { step: 'send:failed' });
      const state = await d.device.getState();
      const code = e instanceof RelayError ? e.code : 'PeerUnreachable';
      return { status: 424, body: { arcs: [], state, error: { code, message: `${(e as Error).message}; the device was not stopped (${state})` } } };
    }
    const r = await openSave(d.device, req.precopy);
    if (r.error || r.stream?.kind !== 'save') link.close();
    if (r.error) {
      await ctx.journal.step(device, { step: 'send:failed' });
      return arcsReply(r);
    }
    if (r.stream?.kind !== 'save') throw new AgentError(500, 'Internal', `${device} reached ${r.state} without opening a save data_fd`);
    const session: SendSession = {
      role: 'source', migration: req.migration, device, targetNode: req.target.node, targetEndpoint: req.target.endpoint, allSent: false, ended: deferred(),
      phase: 'Streaming', bytes: 0, startedAt: new Date().toISOString(), abort: new AbortController(),
    };
    ctx.sessions.put(session);
    session.done = run(ctx, session, r.stream, req, link);
    return { ...arcsReply(r), step: 'send:streaming' };
  }));
}

/**
 * Opens a save session. A device already in a save state without a live data_fd (its agent restarted;
 * the fd died with it) first leaves that state so the arc can hand out a fresh data_fd.
 */
async function openSave(dev: MigrationDevice, precopy: boolean): Promise<SetStateResult> {
  const target = precopy ? 'PRE_COPY' : 'STOP_COPY';
  const now = await dev.getState();
  const arcs = [];
  if (now === 'STOP_COPY' || now === 'PRE_COPY' || now === 'PRE_COPY_P2P') {
    const back = await dev.setState(now === 'STOP_COPY' ? 'STOP' : 'RUNNING');
    arcs.push(...back.arcs);
    if (back.error) return back;
  }
  const r = await dev.setState(target);
  return { ...r, arcs: [...arcs, ...r.arcs] };
}

async function run(ctx: AgentContext, s: SendSession, save: SaveStream, req: Send, link: ClientHttp2Session): Promise<void> {
  const log = ctx.log.child({ migration: s.migration, device: s.device, role: 'source' });
  try {
    const result = await sendStream(save, {
      endpoint: req.target.endpoint, node: req.target.node, tls: ctx.tls, migration: s.migration, device: req.target.device, ticket: req.ticket,
      algorithm: ctx.config.digest, signal: s.abort.signal, stallMs: ctx.config.timeouts.streamIdle, ...(req.bandwidth ? { bandwidth: req.bandwidth } : {}),
      onProgress: (b) => { s.bytes = b; },
    }, link);
    s.allSent = true;
    s.bytes = result.bytes;
    s.digest = result.digest;
    finish(s, 'Verified');
    await ctx.journal.step(s.device, { step: 'send:verified' });
    log.info({ bytes: result.bytes, digest: result.digest }, 'stream sent and verified by the target');
  } catch (e) {
    const f = e instanceof SendFailure ? e : undefined;
    s.allSent = f?.allSent ?? false;
    // Every failure of the relay has its code (the target could not be reached, refused, cut...);
    // only a bug of ours is Internal.
    const code = e instanceof RelayError ? e.code : 'Internal';
    finish(s, code === 'Cancelled' ? 'Cancelled' : 'Failed', { code, message: (e as Error).message });
    await ctx.journal.step(s.device, { step: s.allSent ? 'send:unknown' : 'send:failed' });
    log.warn({ code, allSent: s.allSent, bytes: s.bytes }, `send failed: ${(e as Error).message}`);
  } finally {
    await save.close();
  }
}

export type { SendRequest };
