/**
 * A TCP proxy a fault test controls, put between agents: it passes bytes, cuts every connection,
 * black-holes them (keeps them open, moves nothing), corrupts a byte, or cuts a connection after so
 * many bytes. TLS runs end to end through it, so what it damages the peers must detect.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';

export type ProxyMode = 'pass' | 'cut' | 'blackhole' | 'corrupt' | 'truncate';

export class FaultProxy {
  private mode: ProxyMode = 'pass';
  private readonly pairs = new Set<[Socket, Socket]>();
  private server: Server | undefined;
  /** Bytes passed toward the upstream (the target) since the mode last changed. */
  private counted = 0;
  private truncateAt = 0;

  constructor(private readonly listen: { host: string; port: number }, private readonly upstream: { host: string; port: number }) {}

  async start(): Promise<this> {
    this.server = createServer((down) => this.accept(down));
    await new Promise<void>((r, j) => { this.server!.once('error', j); this.server!.listen(this.listen.port, this.listen.host, () => r()); });
    return this;
  }

  get endpoint(): string {
    return `https://${this.listen.host}:${this.listen.port}`;
  }

  /** cut: destroy every connection and refuse new ones; truncate: cut each after `bytes` more. */
  set(mode: ProxyMode, bytes = 0): void {
    this.mode = mode;
    this.counted = 0;
    this.truncateAt = bytes;
    if (mode === 'cut') for (const [a, b] of this.pairs) { a.destroy(); b.destroy(); }
    if (mode === 'blackhole') for (const [a, b] of this.pairs) { a.pause(); b.pause(); }
    if (mode === 'pass') for (const [a, b] of this.pairs) { a.resume(); b.resume(); }
  }

  async stop(): Promise<void> {
    for (const [a, b] of this.pairs) { a.destroy(); b.destroy(); }
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private accept(down: Socket): void {
    if (this.mode === 'cut') { down.destroy(); return; }
    const up = createConnection(this.upstream);
    const pair: [Socket, Socket] = [down, up];
    this.pairs.add(pair);
    const end = () => { this.pairs.delete(pair); down.destroy(); up.destroy(); };
    down.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    if (this.mode === 'blackhole') { down.pause(); up.pause(); }
    down.on('data', (chunk: Buffer) => {
      let out = chunk;
      if (this.mode === 'corrupt' && this.counted + chunk.length > 64 * 1024) {
        out = Buffer.from(chunk);
        out[out.length >> 1] = out[out.length >> 1]! ^ 0x5a;
        this.mode = 'pass'; // one damaged byte is enough
      }
      this.counted += chunk.length;
      if (this.mode === 'truncate' && this.counted > this.truncateAt) { end(); return; }
      up.write(out);
    });
    up.on('data', (chunk: Buffer) => down.write(chunk));
  }
}
