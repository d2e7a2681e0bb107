/**
 * data_fd as SaveStream / ResumeStream. fs.read/fs.write on the raw fd work for the kernel's anon-inode
 * data_fd and for pipes alike; a blocking call holds a libuv threadpool thread, never the event loop.
 * Bytes go straight between the caller's buffer and the fd: no copies here.
 */
import { close, read, write } from 'node:fs';
import { constants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { DeviceError, type ResumeStream, type SaveStream } from './device.js';

const readP = promisify(read);
const writeP = promisify(write);
const closeP = promisify(close);

/** How long to wait before retrying EAGAIN, so a non-blocking fd does not spin a thread. */
const EAGAIN_BACKOFF_MS = 1;

type Errno = NodeJS.ErrnoException;

/** libuv has no name for some errnos (ENOMSG among them): its code is then "Unknown system error -42". */
function errnoIs(e: unknown, name: keyof typeof constants.errno): boolean {
  const err = e as Errno;
  return err.code === name || err.errno === -constants.errno[name];
}

function asDeviceError(e: unknown, what: string, device: string): DeviceError {
  const err = e as Errno;
  const code = err.code && /^E[A-Z0-9]+$/.test(err.code) ? err.code : `E${-(err.errno ?? 0)}`;
  return new DeviceError(code, `${what}: ${err.message}`, device);
}

/**
 * One fd, closed exactly once. A close while a read or write is in flight is deferred until that
 * call returns: closing the number under it would let the next open reuse it, and a queued call could
 * then touch someone else's file.
 */
class RawFd {
  private closed = false;
  private inflight: Promise<unknown> | undefined;

  constructor(readonly fd: number, private readonly device: string) {}

  get isClosed(): boolean {
    return this.closed;
  }

  async run<T>(what: string, op: (fd: number) => Promise<T>): Promise<T> {
    if (this.closed) throw new DeviceError('ENODEV', `${this.device}: ${what}: the data_fd is closed`, this.device);
    const p = op(this.fd);
    this.inflight = p;
    try {
      return await p;
    } finally {
      if (this.inflight === p) this.inflight = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const pending = this.inflight;
    if (!pending) return closeP(this.fd);
    // The in-flight call ends when the session does (EOF, or the kernel's error); close after it.
    void pending.catch(() => undefined).then(() => closeP(this.fd)).catch(() => undefined);
  }
}

/**
 * PRE_COPY's temporary end of data is ENOMSG by the uAPI's word (mlx5 answers so), but a driver may
 * answer 0 instead, as an end of file: mtty does, and QEMU reads either as "nothing for now". So a 0
 * is the stream's end only once the device is in STOP_COPY: from the start for a data_fd opened by
 * STOP -> STOP_COPY, after stopCopy() for one opened by RUNNING -> PRE_COPY.
 */
export class FdSaveStream implements SaveStream {
  readonly kind = 'save';
  private readonly raw: RawFd;

  constructor(readonly fd: number, private readonly device: string, private final = true) {
    this.raw = new RawFd(fd, device);
  }

  /** The device reached STOP_COPY: what the data_fd holds now is the rest of the stream. */
  stopCopy(): void {
    this.final = true;
  }

  /** Bytes read into `buf` (0 at the end of the stream), or 'ENOMSG' at PRE_COPY's temporary end. */
  async read(buf: Buffer): Promise<number | 'ENOMSG'> {
    for (;;) {
      try {
        // A read begun before STOP_COPY was reached may see the PRE_COPY end: its 0 is not final.
        const final = this.final;
        const { bytesRead } = await this.raw.run('read', (fd) => readP(fd, buf, 0, buf.length, null));
        // A read that returns after close() raced the end of the session: its 0 is not the stream's end.
        if (this.raw.isClosed) throw new DeviceError('ENODEV', `${this.device}: the data_fd was closed during a read`, this.device);
        if (bytesRead === 0 && !final) return 'ENOMSG';
        return bytesRead;
      } catch (e) {
        if (e instanceof DeviceError) throw e;
        if (errnoIs(e, 'ENOMSG')) return 'ENOMSG';
        if (errnoIs(e, 'EINTR')) continue;
        if (errnoIs(e, 'EAGAIN')) {
          await sleep(EAGAIN_BACKOFF_MS);
          continue;
        }
        throw asDeviceError(e, `${this.device}: reading data_fd ${this.fd}`, this.device);
      }
    }
  }

  close(): Promise<void> {
    return this.raw.close();
  }
}

export class FdResumeStream implements ResumeStream {
  readonly kind = 'resume';
  private readonly raw: RawFd;

  constructor(readonly fd: number, private readonly device: string) {
    this.raw = new RawFd(fd, device);
  }

  /** Writes all of `buf`, however many write() calls the fd takes. */
  async write(buf: Buffer): Promise<void> {
    let at = 0;
    while (at < buf.length) {
      try {
        const { bytesWritten } = await this.raw.run('write', (fd) => writeP(fd, buf, at, buf.length - at, null));
        at += bytesWritten;
      } catch (e) {
        if (e instanceof DeviceError) throw e;
        if (errnoIs(e, 'EINTR')) continue;
        if (errnoIs(e, 'EAGAIN')) {
          await sleep(EAGAIN_BACKOFF_MS);
          continue;
        }
        throw asDeviceError(e, `${this.device}: writing data_fd ${this.fd}`, this.device);
      }
    }
  }

  close(): Promise<void> {
    return this.raw.close();
  }
}
