/**
 * What the kubelet's gRPC APIs share here: messages declared as protobufjs JSON in TypeScript (so
 * nothing but compiled JavaScript has to ship with the build), typed method definitions for
 * @grpc/grpc-js, and unix-socket addresses.
 *
 * The declarations carry only the fields devmig reads or writes; their numbers are the kubelet's
 * published ones (k8s.io/kubelet, pkg/apis/*). protobuf skips fields it was not told about, so the
 * kubelet's other fields (CPU ids, memory, topology) cost nothing and break nothing.
 */
import { Metadata, ServerCredentials, type Client, type MethodDefinition, type Server, type ServiceError } from '@grpc/grpc-js';
import { resolve } from 'node:path';
import protobuf from 'protobufjs';

/** A message type's fields as protobufjs JSON: `{ name: { id, type, rule? } }`. */
export type Fields = Record<string, { id: number; type: string; rule?: 'repeated' }>;

/** One proto package's messages, resolved so that their encoders and decoders exist. */
export function protoPackage(name: string, messages: Record<string, Fields>): (message: string) => protobuf.Type {
  const nested = Object.fromEntries(Object.entries(messages).map(([m, fields]) => [m, { fields }]));
  const root = protobuf.Root.fromJSON({ nested: { [name]: { nested } } }).resolveAll();
  return (message) => root.lookupType(`${name}.${message}`);
}

/**
 * A method of a service, typed by its request and response. Decoding fills every declared field
 * (absent scalars with their proto3 default, absent lists with []), so the TypeScript type holds.
 */
export function method<Req extends object, Res extends object>(service: string, name: string, req: protobuf.Type, res: protobuf.Type,
  responseStream = false): MethodDefinition<Req, Res> {
  return {
    path: `/${service}/${name}`,
    originalName: name,
    requestStream: false,
    responseStream,
    requestSerialize: encoder<Req>(req),
    requestDeserialize: decoder<Req>(req),
    responseSerialize: encoder<Res>(res),
    responseDeserialize: decoder<Res>(res),
  };
}

function encoder<T extends object>(type: protobuf.Type): (value: T) => Buffer {
  return (value) => Buffer.from(type.encode(type.fromObject(value)).finish());
}

function decoder<T extends object>(type: protobuf.Type): (bytes: Buffer) => T {
  return (bytes) => type.toObject(type.decode(bytes), { defaults: true, arrays: true, longs: Number }) as T;
}

/** The gRPC target for a unix socket (grpc-js and grpc-go both take `unix:` + an absolute path). */
export function unixTarget(socket: string): string {
  return `unix:${resolve(socket)}`;
}

/** One unary call with a deadline; it rejects with grpc-js's ServiceError (code, details). */
export function unary<Req, Res>(client: Client, m: MethodDefinition<Req, Res>, req: Req, timeoutMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, req, new Metadata(),
      { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res?: Res) => (err ? reject(err) : resolve(res!)));
  });
}

/** Serves `server` on a unix socket, without TLS (the kubelet's sockets are protected by their file modes). */
export function listenUnix(server: Server, socket: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.bindAsync(unixTarget(socket), ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
  });
}
