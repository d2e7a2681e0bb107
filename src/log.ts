/** JSON logs (pino) on stderr, so stdout stays for command output. */
import { pino, type Logger } from 'pino';

export function createLogger(name: string, level = process.env.DEVMIG_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { component: name } }, pino.destination(2));
}
