/**
 * The kubelet's side of the device plugin protocol, for tests, in real gRPC over unix sockets: the
 * Registration service on <dir>/kubelet.sock, and the calls the kubelet makes on a plugin's socket.
 * Like the kubelet's device manager, it wipes the directory as it starts, and answers a Register
 * only after it has reached the plugin and asked for its options.
 */
import {
  Client, credentials, Server, status, type ClientReadableStream, type MethodDefinition,
  type sendUnaryData, type ServerUnaryCall,
} from '@grpc/grpc-js';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  devicePlugin, registration, type DevicePluginOptions, type Empty, type ListAndWatchResponse, type RegisterRequest,
} from '../../src/kubelet/deviceplugin-api.js';
import { listenUnix, unary, unixTarget } from '../../src/kubelet/grpc.js';

export class FakeKubelet {
  readonly requests: RegisterRequest[] = [];
  /** The options each registered plugin answered when this kubelet connected to it. */
  readonly options: DevicePluginOptions[] = [];
  /** Set: Register answers this error (as the kubelet does for a bad version or resource name). */
  refuse: string | undefined;
  private waiters: ((r: RegisterRequest) => void)[] = [];

  private constructor(readonly dir: string, private readonly server: Server) {}

  static async start(dir: string): Promise<FakeKubelet> {
    for (const f of await readdir(dir).catch(() => [])) await rm(join(dir, f), { force: true, recursive: true });
    const server = new Server();
    const k = new FakeKubelet(dir, server);
    server.addService(registration, {
      Register: (call: ServerUnaryCall<RegisterRequest, Empty>, cb: sendUnaryData<Empty>) => {
        k.register(call.request).then(() => cb(null, {}), (e: Error) => cb({ code: status.UNKNOWN, details: e.message }));
      },
    });
    await listenUnix(server, join(dir, 'kubelet.sock'));
    return k;
  }

  /** Resolves at the next registration from now on. */
  nextRegistration(): Promise<RegisterRequest> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** A kubelet that stops removes its socket; a plugin's ListAndWatch streams end with the connections. */
  async stop(): Promise<void> {
    this.server.forceShutdown();
    await rm(join(this.dir, 'kubelet.sock'), { force: true });
  }

  private async register(req: RegisterRequest): Promise<void> {
    if (this.refuse) throw new Error(this.refuse);
    const plugin = new PluginClient(join(this.dir, req.endpoint));
    try {
      this.options.push(await plugin.options());
    } finally {
      plugin.close();
    }
    this.requests.push(req);
    for (const w of this.waiters.splice(0)) w(req);
  }
}

/** Calls a device plugin's socket the way the kubelet does. */
export class PluginClient {
  private readonly client: Client;

  constructor(socket: string) {
    this.client = new Client(unixTarget(socket), credentials.createInsecure());
  }

  options(): Promise<DevicePluginOptions> {
    return this.unary(devicePlugin.GetDevicePluginOptions, {});
  }

  allocate(containers: string[][]) {
    return this.unary(devicePlugin.Allocate, { containerRequests: containers.map((devicesIds) => ({ devicesIds })) });
  }

  preferred(available: string[], mustInclude: string[], size: number) {
    return this.unary(devicePlugin.GetPreferredAllocation, {
      containerRequests: [{ availableDeviceIds: available, mustIncludeDeviceIds: mustInclude, allocationSize: size }],
    });
  }

  preStart(ids: string[]) {
    return this.unary(devicePlugin.PreStartContainer, { devicesIds: ids });
  }

  listAndWatch(): ClientReadableStream<ListAndWatchResponse> {
    const m = devicePlugin.ListAndWatch;
    return this.client.makeServerStreamRequest(m.path, m.requestSerialize, m.responseDeserialize, {});
  }

  close(): void {
    this.client.close();
  }

  private unary<Req, Res>(m: MethodDefinition<Req, Res>, req: Req): Promise<Res> {
    return unary(this.client, m, req, 10_000);
  }
}
