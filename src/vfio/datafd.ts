/**
 * data_fd as SaveStream / ResumeStream. fs.read/fs.write on the raw fd work for the kernel's anon-inode
 * data_fd and for pipes alike (a libuv threadpool thread blocks, not the event loop). PRE_COPY's
 * temporary end of data comes back from read() as ENOMSG.
 */
import { close, read, write } from 'node:fs';
import { promisify } from 'node:util';
import { DeviceError, type ResumeStream, type SaveStream } from './device.js';

const readP = promisify(read);
const writeP = promisify(write);
const closeP = promisify(close);

function asDeviceError(e: unknown, what: string): DeviceError {
  const err = e as NodeJS.ErrnoException;
  return new DeviceError(err.code ?? 'EIO', `${what}: ${err.message}`);
}

export class FdSaveStream implements SaveStream {
  readonly kind = 'save';
  private closed = false;
  constructor(readonly fd: number, private readonly device: string) {}

  async read(buf: Buffer): Promise<number | 'ENOMSG'> {
    for (;;) {
      try {
        const { bytesRead } = await readP(this.fd, buf, 0, buf.length, null);
        return bytesRead;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOMSG') return 'ENOMSG';
        if (code === 'EINTR' || code === 'EAGAIN') continue;
        throw asDeviceError(e, `${this.device}: reading data_fd ${this.fd}`);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await closeP(this.fd);
  }
}

export class FdResumeStream implements ResumeStream {
  readonly kind = 'resume';
  private closed = false;
  constructor(readonly fd: number, private readonly device: string) {}

  async write(buf: Buffer): Promise<void> {
    let at = 0;
    while (at < buf.length) {
      try {
        const { bytesWritten } = await writeP(this.fd, buf, at, buf.length - at, null);
        at += bytesWritten;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EINTR' || code === 'EAGAIN') continue;
        throw asDeviceError(e, `${this.device}: writing data_fd ${this.fd}`);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await closeP(this.fd);
  }
}
