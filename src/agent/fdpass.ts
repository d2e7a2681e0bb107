/**
 * Handing device fds between the agent and its holder with pidfd_getfd(2) (Linux 5.6+): the holder
 * takes copies of the agent's device fds; a restarted agent takes copies back. The device stays open
 * throughout, so the kernel never resets it. Needs ptrace rights over the other process (same user,
 * or CAP_SYS_PTRACE; in a pod, shareProcessNamespace).
 */
import koffi from 'koffi';
import { DeviceError } from '../vfio/device.js';
import { errnoName } from '../vfio/kernel.js';

const SYS_PIDFD_OPEN = 434;
const SYS_PIDFD_GETFD = 438;

let syscall: ((n: number, ...args: unknown[]) => number) | undefined;
let close: ((fd: number) => number) | undefined;

function libc() {
  if (!syscall || !close) {
    const l = koffi.load('libc.so.6');
    syscall = l.func('long syscall(long number, ...)') as (n: number, ...args: unknown[]) => number;
    close = l.func('int close(int fd)') as (fd: number) => number;
  }
  return { syscall, close };
}

/** Copies of `fds` of process `pid`, in this process (all or none). */
export function takeFds(pid: number, fds: number[]): number[] {
  const { syscall: sys, close: cl } = libc();
  const pidfd = Number(sys(SYS_PIDFD_OPEN, 'int', pid, 'unsigned int', 0));
  if (pidfd < 0) throw new DeviceError(errnoName(koffi.errno()), `pidfd_open(${pid}) failed: ${errnoName(koffi.errno())}`);
  const got: number[] = [];
  try {
    for (const fd of fds) {
      const mine = Number(sys(SYS_PIDFD_GETFD, 'int', pidfd, 'int', fd, 'unsigned int', 0));
      if (mine < 0) {
        const e = errnoName(koffi.errno());
        throw new DeviceError(e, `pidfd_getfd(${pid}, ${fd}) failed: ${e}${e === 'EPERM' ? ' (the holder needs ptrace rights over the agent: same user or CAP_SYS_PTRACE)' : ''}`);
      }
      got.push(mine);
    }
    return got;
  } catch (e) {
    for (const fd of got) cl(fd);
    throw e;
  } finally {
    cl(pidfd);
  }
}

export function closeFds(fds: number[]): void {
  const { close: cl } = libc();
  for (const fd of fds) cl(fd);
}
