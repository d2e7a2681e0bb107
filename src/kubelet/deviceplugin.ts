/**
 * A device plugin for tests on a real kubelet: it advertises a fixed list of device IDs (a
 * simulated node's device names) under one resource name, all Healthy, so that pods can request
 * them and the kubelet's PodResources API reports who got which.
 *
 * It follows the kubelet's protocol (k8s.io/kubelet pkg/apis/deviceplugin/v1beta1): serve the
 * DevicePlugin service on a socket in the kubelet's device-plugins directory, then Register with
 * the kubelet's Registration service on kubelet.sock in that directory. A starting kubelet wipes
 * the directory and makes a new kubelet.sock; the plugin sees the new socket, serves its own again
 * and registers again.
 */
import {
  Client, credentials, Server, status, type sendUnaryData, type ServerUnaryCall,
  type ServerWritableStream, type ServiceError,
} from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { pino, type Logger } from 'pino';
import {
  devicePlugin, DEVICE_PLUGIN_VERSION, HEALTHY, registration, type AllocateRequest, type AllocateResponse, type DevicePluginOptions,
  type Empty, type ListAndWatchResponse, type PreferredAllocationRequest, type PreferredAllocationResponse, type PreStartContainerRequest,
} from './deviceplugin-api.js';
import { listenUnix, unary, unixTarget } from './grpc.js';
import { isExtendedResourceName } from './names.js';

export const DEFAULT_DEVICE_PLUGIN_DIR = '/var/lib/kubelet/device-plugins';
/** The kubelet's Registration socket's name in the device-plugins directory. */
export const KUBELET_SOCKET = 'kubelet.sock';

export interface TestDevicePluginOptions {
  /** The kubelet's device-plugins directory: <kubelet root dir>/device-plugins. */
  readonly dir: string;
  /** An extended resource name, vendor.example/name (e.g. devmig.io/sim). */
  readonly resourceName: string;
  readonly deviceIds: readonly string[];
  /** The plugin's socket file name in `dir`; default from the resource name (devmig.io-sim.sock). */
  readonly endpoint?: string;
  /** How often kubelet.sock is looked at, besides the file-system events that usually come first. */
  readonly checkIntervalMs?: number;
  /** Deadline of a Register call. */
  readonly registerTimeoutMs?: number;
  readonly log?: Logger;
}

/**
 * Events: `registered` (n: registrations so far) after each successful Register; `rejected` (Error)
 * when the kubelet refuses the registration (a bad resource name or version): the API expects the
 * plugin to stop then, and it does not try that kubelet again.
 */
export class TestDevicePlugin extends EventEmitter<{ registered: [number]; rejected: [Error] }> {
  readonly socket: string;
  readonly kubeletSocket: string;
  private registered = 0;
  private server: Server | undefined;
  private readonly streams = new Set<ServerWritableStream<Empty, ListAndWatchResponse>>();
  private registeredWith: string | undefined;
  private rejectedBy: string | undefined;
  private checking: Promise<void> = Promise.resolve();
  private queued = false;
  private timer: NodeJS.Timeout | undefined;
  private watcher: FSWatcher | undefined;
  private stopped = false;
  private readonly log: Logger;

  /** Successful registrations so far (one per kubelet start it saw). */
  get registrations(): number {
    return this.registered;
  }

  constructor(private readonly opts: TestDevicePluginOptions) {
    super();
    checkOptions(opts);
    this.socket = join(opts.dir, opts.endpoint ?? `${opts.resourceName.replace(/[^A-Za-z0-9._-]/g, '-')}.sock`);
    this.kubeletSocket = join(opts.dir, KUBELET_SOCKET);
    this.log = opts.log ?? pino({ enabled: false });
  }

  /**
   * Serves the plugin's socket, and registers now if the kubelet is there (before this returns), or
   * as soon as it is.
   */
  async start(): Promise<this> {
    await mkdir(this.opts.dir, { recursive: true });
    await this.serve();
    this.watcher = watch(this.opts.dir, () => this.check());
    this.watcher.on('error', (e) => this.log.warn({ err: e }, 'watching the device-plugins directory failed; checking on a timer only'));
    this.timer = setInterval(() => this.check(), this.opts.checkIntervalMs ?? 1000);
    this.check();
    await this.checking;
    return this;
  }

  /** Ends every ListAndWatch stream (the kubelet then marks the devices unhealthy) and removes the socket. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    this.watcher?.close();
    await this.checking;
    await this.closeServer();
    await rm(this.socket, { force: true });
  }

  /** Queues a reconcile, unless one is queued and has not started: a burst of file events makes one. */
  private check(): void {
    if (this.queued) return;
    this.queued = true;
    this.checking = this.checking.then(() => { this.queued = false; return this.reconcile(); }).catch((e: unknown) => {
      this.log.warn({ err: e }, 'device plugin check failed; trying again');
    });
  }

  /** Registers with a kubelet it has not registered with yet, serving its socket anew if the kubelet wiped it. */
  private async reconcile(): Promise<void> {
    if (this.stopped) return;
    const kubelet = await stat(this.kubeletSocket).catch(() => undefined);
    if (!kubelet?.isSocket()) return;
    const incarnation = `${kubelet.ino}:${kubelet.ctimeMs}`;
    const served = await stat(this.socket).then((s) => s.isSocket(), () => false);
    if (served && (incarnation === this.registeredWith || incarnation === this.rejectedBy)) return;
    if (!served) await this.serve();
    try {
      await this.register();
    } catch (e) {
      const err = e as ServiceError;
      // The kubelet is starting (its socket is there before it answers): the next check tries again.
      if (err.code === status.UNAVAILABLE || err.code === status.DEADLINE_EXCEEDED) throw e;
      this.rejectedBy = incarnation;
      this.log.error({ err: e, kubeletSocket: this.kubeletSocket }, 'the kubelet refused the registration');
      this.emit('rejected', new Error(`the kubelet on ${this.kubeletSocket} refused ${this.opts.resourceName}: ${err.details || err.message}`));
      return;
    }
    this.registeredWith = incarnation;
    this.registered += 1;
    this.log.info({ resourceName: this.opts.resourceName, socket: this.socket, devices: this.opts.deviceIds, n: this.registered },
      'registered with the kubelet');
    this.emit('registered', this.registered);
  }

  private async register(): Promise<void> {
    const client = new Client(unixTarget(this.kubeletSocket), credentials.createInsecure());
    const req = {
      version: DEVICE_PLUGIN_VERSION, endpoint: basename(this.socket), resourceName: this.opts.resourceName, options: OPTIONS,
    };
    try {
      await unary(client, registration.Register, req, this.opts.registerTimeoutMs ?? 10_000);
    } finally {
      client.close();
    }
  }

  private async serve(): Promise<void> {
    await this.closeServer();
    await rm(this.socket, { force: true });
    const server = new Server();
    server.addService(devicePlugin, {
      GetDevicePluginOptions: (_call: ServerUnaryCall<Empty, DevicePluginOptions>, cb: sendUnaryData<DevicePluginOptions>) => cb(null, OPTIONS),
      ListAndWatch: (call: ServerWritableStream<Empty, ListAndWatchResponse>) => this.listAndWatch(call),
      GetPreferredAllocation: (call: ServerUnaryCall<PreferredAllocationRequest, PreferredAllocationResponse>,
        cb: sendUnaryData<PreferredAllocationResponse>) => this.answer(cb, () => this.preferred(call.request)),
      Allocate: (call: ServerUnaryCall<AllocateRequest, AllocateResponse>, cb: sendUnaryData<AllocateResponse>) =>
        this.answer(cb, () => this.allocate(call.request)),
      PreStartContainer: (call: ServerUnaryCall<PreStartContainerRequest, Empty>, cb: sendUnaryData<Empty>) =>
        this.answer(cb, () => { this.known(call.request.devicesIds); return {}; }),
    });
    await listenUnix(server, this.socket);
    this.server = server;
    this.log.info({ socket: this.socket }, 'device plugin serving');
  }

  /** Ends the ListAndWatch streams cleanly (status OK), then closes; a client that holds on is cut after a second. */
  private async closeServer(): Promise<void> {
    for (const s of this.streams) s.end();
    this.streams.clear();
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    await new Promise<void>((resolve) => {
      const cut = setTimeout(() => { server.forceShutdown(); resolve(); }, 1000);
      server.tryShutdown(() => { clearTimeout(cut); resolve(); });
    });
  }

  /** The whole list at once, then held open: the devices never change, and an end would read as the plugin gone. */
  private listAndWatch(call: ServerWritableStream<Empty, ListAndWatchResponse>): void {
    this.streams.add(call);
    call.on('cancelled', () => this.streams.delete(call));
    call.on('error', () => this.streams.delete(call));
    call.write({ devices: this.opts.deviceIds.map((id) => ({ id, health: HEALTHY })) });
  }

  /** One empty response per container: the simulated devices need no mounts, device nodes or environment. */
  private allocate(req: AllocateRequest): AllocateResponse {
    for (const c of req.containerRequests) this.known(c.devicesIds);
    return { containerResponses: req.containerRequests.map(() => ({})) };
  }

  /** The IDs that must be included, then the first available ones, up to the size asked for. */
  private preferred(req: PreferredAllocationRequest): PreferredAllocationResponse {
    return {
      containerResponses: req.containerRequests.map((c) => {
        this.known([...c.availableDeviceIds, ...c.mustIncludeDeviceIds]);
        const pick = [...new Set([...c.mustIncludeDeviceIds, ...c.availableDeviceIds])];
        return { deviceIds: pick.slice(0, Math.max(c.allocationSize, c.mustIncludeDeviceIds.length)) };
      }),
    };
  }

  private known(ids: readonly string[]): void {
    const unknown = ids.filter((id) => !this.opts.deviceIds.includes(id));
    if (unknown.length > 0) {
      throw Object.assign(new Error(`${this.opts.resourceName} has no device ${unknown.map((u) => `"${u}"`).join(', ')}; `
        + `its devices are ${this.opts.deviceIds.join(', ')}`), { code: status.INVALID_ARGUMENT });
    }
  }

  private answer<T>(cb: sendUnaryData<T>, fn: () => T): void {
    try {
      cb(null, fn());
    } catch (e) {
      cb({ code: (e as { code?: status }).code ?? status.INTERNAL, details: (e as Error).message });
    }
  }
}

/** Neither GetPreferredAllocation nor PreStartContainer is needed: the kubelet calls neither (both answer anyway). */
const OPTIONS: DevicePluginOptions = { preStartRequired: false, getPreferredAllocationAvailable: false };

function checkOptions(opts: TestDevicePluginOptions): void {
  if (!isExtendedResourceName(opts.resourceName)) {
    throw new Error(`resource name "${opts.resourceName}" is not an extended resource name: use vendor.example/name (e.g. devmig.io/sim)`);
  }
  if (opts.endpoint !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(opts.endpoint)) {
    throw new Error(`endpoint "${opts.endpoint}" must be a socket file name in ${opts.dir}, such as devmig-sim.sock`);
  }
  if (opts.deviceIds.length === 0) throw new Error('device IDs: a device plugin needs at least one');
  const bad = opts.deviceIds.find((id) => !/^[A-Za-z0-9][-A-Za-z0-9_.:]{0,62}$/.test(id));
  if (bad !== undefined) throw new Error(`device ID "${bad}": use 1-63 letters, digits, "-", "_", ".", ":"`);
  const twice = opts.deviceIds.find((id, i) => opts.deviceIds.indexOf(id) !== i);
  if (twice !== undefined) throw new Error(`device ID "${twice}" is listed twice`);
}
