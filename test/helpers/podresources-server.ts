/**
 * A kubelet PodResources v1 server for tests, speaking real gRPC on a unix socket: it answers List
 * and GetAllocatableResources from data the test sets, or never answers, or implements only some
 * methods (as an older kubelet, or one with a feature gate off, does).
 */
import { Server, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { listenUnix } from '../../src/kubelet/grpc.js';
import {
  podResourcesLister, type AllocatableResourcesResponse, type Empty, type ListPodResourcesResponse,
} from '../../src/kubelet/podresources-api.js';

type Method = keyof typeof podResourcesLister;

export class FakePodResources {
  list: ListPodResourcesResponse = { podResources: [] };
  allocatable: AllocatableResourcesResponse = { devices: [] };
  /** false: calls are taken and never answered (a hung kubelet). */
  answering = true;
  readonly calls: Method[] = [];

  private constructor(readonly socket: string, private readonly server: Server) {}

  /** Serves on `socket`; `methods` leaves the others UNIMPLEMENTED. */
  static async start(socket: string, methods: readonly Method[] = ['List', 'GetAllocatableResources']): Promise<FakePodResources> {
    const server = new Server();
    const fake = new FakePodResources(socket, server);
    const handler = <T>(name: Method, data: () => T) => (_call: ServerUnaryCall<Empty, T>, cb: sendUnaryData<T>) => {
      fake.calls.push(name);
      if (fake.answering) cb(null, data());
    };
    server.addService(podResourcesLister, {
      ...(methods.includes('List') ? { List: handler('List', () => fake.list) } : {}),
      ...(methods.includes('GetAllocatableResources') ? { GetAllocatableResources: handler('GetAllocatableResources', () => fake.allocatable) } : {}),
    });
    await listenUnix(server, socket);
    return fake;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}
