/**
 * The test device plugin as a process, for a real kubelet (a pods environment starts one per node):
 *
 *   node dist/tools/device-plugin.js --dir <kubelet root>/device-plugins --resource devmig.io/sim --devices sim-0,sim-1
 *
 * Prints one JSON line on stdout per registration ({"registered":n,...}), so a harness can wait for
 * the first; logs go to stderr. Exits 0 on SIGTERM or SIGINT, 1 when the kubelet refuses the
 * registration, 2 on bad arguments.
 */
import { parseArgs } from 'node:util';
import { DEFAULT_DEVICE_PLUGIN_DIR, TestDevicePlugin } from '../kubelet/deviceplugin.js';
import { createLogger } from '../log.js';

const USAGE = 'usage: device-plugin [--dir DIR] [--resource NAME] --devices ID,ID...\n'
  + `  --dir       the kubelet's device-plugins directory (default ${DEFAULT_DEVICE_PLUGIN_DIR})\n`
  + '  --resource  the extended resource name to advertise (default devmig.io/sim)\n'
  + '  --devices   the device IDs, comma-separated: a simulated node\'s device names\n';

let args;
try {
  args = parseArgs({
    options: {
      dir: { type: 'string', default: DEFAULT_DEVICE_PLUGIN_DIR },
      resource: { type: 'string', default: 'devmig.io/sim' },
      devices: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n${USAGE}`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
if (!args.devices) {
  process.stderr.write(`--devices is required\n${USAGE}`);
  process.exit(2);
}

const log = createLogger('device-plugin');
let plugin: TestDevicePlugin;
try {
  plugin = new TestDevicePlugin({
    dir: args.dir, resourceName: args.resource, deviceIds: args.devices.split(',').map((d) => d.trim()).filter(Boolean), log,
  });
} catch (e) {
  process.stderr.write(`device-plugin: ${(e as Error).message}\n`);
  process.exit(2);
}
plugin.on('registered', (n) => {
  process.stdout.write(`${JSON.stringify({ registered: n, resourceName: args.resource, socket: plugin.socket })}\n`);
});
const stop = (code: number) => {
  plugin.stop().then(() => process.exit(code), (e: unknown) => { log.error({ err: e }, 'stopping failed'); process.exit(1); });
};
plugin.on('rejected', (e) => { process.stderr.write(`device-plugin: ${e.message}\n`); stop(1); });
process.once('SIGTERM', () => stop(0));
process.once('SIGINT', () => stop(0));
try {
  await plugin.start();
} catch (e) {
  process.stderr.write(`device-plugin: cannot serve ${plugin.socket}: ${(e as Error).message}\n`);
  stop(1);
}
