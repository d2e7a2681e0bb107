// The kubelet's side of its PodResources and device plugin gRPC APIs, built from the kubelet's own
// generated types (k8s.io/kubelet) and grpc-go, so that the tests prove devmig's TypeScript message
// declarations interoperate with them byte for byte (test/integration/kubelet-wire.test.ts).
//
//	kubelet-grpc podresources SOCKET   serves List and GetAllocatableResources on SOCKET from the
//	                                   protojson on stdin: {"list": {...}, "allocatable": {...}}
//	kubelet-grpc kubelet DIR           serves Registration on DIR/kubelet.sock; for each plugin that
//	                                   registers, does what the kubelet's device manager does (dial
//	                                   its endpoint, GetDevicePluginOptions, ListAndWatch), then
//	                                   allocates its devices to two containers; prints one JSON line
//	                                   per plugin
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	dp "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	pr "k8s.io/kubelet/pkg/apis/podresources/v1"
)

func main() {
	if len(os.Args) != 3 {
		fail(fmt.Errorf("usage: kubelet-grpc podresources SOCKET | kubelet DIR"))
	}
	var err error
	switch os.Args[1] {
	case "podresources":
		err = servePodResources(os.Args[2])
	case "kubelet":
		err = serveRegistration(os.Args[2])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	fail(err)
}

func fail(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "kubelet-grpc:", err)
		os.Exit(1)
	}
}

type podResources struct {
	pr.UnimplementedPodResourcesListerServer
	list        *pr.ListPodResourcesResponse
	allocatable *pr.AllocatableResourcesResponse
}

func (p *podResources) List(context.Context, *pr.ListPodResourcesRequest) (*pr.ListPodResourcesResponse, error) {
	return p.list, nil
}

func (p *podResources) GetAllocatableResources(context.Context, *pr.AllocatableResourcesRequest) (*pr.AllocatableResourcesResponse, error) {
	return p.allocatable, nil
}

func servePodResources(socket string) error {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	var raw struct{ List, Allocatable json.RawMessage }
	if err := json.Unmarshal(in, &raw); err != nil {
		return err
	}
	srv := &podResources{list: &pr.ListPodResourcesResponse{}, allocatable: &pr.AllocatableResourcesResponse{}}
	if err := protojson.Unmarshal(raw.List, srv.list); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	if err := protojson.Unmarshal(raw.Allocatable, srv.allocatable); err != nil {
		return fmt.Errorf("allocatable: %w", err)
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	pr.RegisterPodResourcesListerServer(s, srv)
	fmt.Println("ready")
	return s.Serve(ln)
}

type registration struct {
	dp.UnimplementedRegistrationServer
	dir string
}

// Register answers once the plugin's socket answers, as the kubelet's device manager does.
func (r *registration) Register(ctx context.Context, req *dp.RegisterRequest) (*dp.Empty, error) {
	if req.Version != dp.Version {
		return nil, fmt.Errorf("unsupported API version %q", req.Version)
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(r.dir, req.Endpoint),
		grpc.WithAuthority("localhost"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	client := dp.NewDevicePluginClient(conn)
	options, err := client.GetDevicePluginOptions(ctx, &dp.Empty{})
	if err != nil {
		return nil, err
	}
	go func() {
		defer conn.Close()
		report := map[string]any{"register": msg(req), "options": msg(options)}
		if err := allocate(client, report); err != nil {
			report["error"] = err.Error()
		}
		line, _ := json.Marshal(report)
		fmt.Println(string(line))
	}()
	return &dp.Empty{}, nil
}

// allocate reads the first ListAndWatch update and allocates its first device to one container and
// the rest to another.
func allocate(client dp.DevicePluginClient, report map[string]any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.ListAndWatch(ctx, &dp.Empty{})
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	report["listAndWatch"] = msg(first)
	var ids []string
	for _, d := range first.Devices {
		ids = append(ids, d.ID)
	}
	if len(ids) < 2 {
		return fmt.Errorf("want two devices at least, got %v", ids)
	}
	res, err := client.Allocate(ctx, &dp.AllocateRequest{ContainerRequests: []*dp.ContainerAllocateRequest{
		{DevicesIds: ids[:1]}, {DevicesIds: ids[1:]},
	}})
	if err != nil {
		return err
	}
	report["allocate"] = msg(res)
	report["containerResponses"] = len(res.ContainerResponses)
	return nil
}

func msg(m proto.Message) json.RawMessage {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func serveRegistration(dir string) error {
	ln, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	dp.RegisterRegistrationServer(s, &registration{dir: dir})
	fmt.Println("ready")
	return s.Serve(ln)
}
