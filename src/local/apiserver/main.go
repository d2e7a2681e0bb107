// Command kube-apiserver-local runs a real kube-apiserver (k8s.io/kubernetes/cmd/kube-apiserver/app)
// on an embedded etcd, on loopback, with RBAC and ServiceAccount tokens, for devmig's local
// environment and integration tests. It writes an admin kubeconfig and prints one JSON line once
// /readyz answers ok; SIGTERM stops the API server, then etcd.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	dataDir := flag.String("data-dir", "", "directory for etcd data, certificates and the kubeconfig (required)")
	port := flag.Int("port", 0, "secure port of the API server (0: pick a free one)")
	flag.Parse()
	if *dataDir == "" {
		fail(fmt.Errorf("--data-dir is required"))
	}
	if err := run(*dataDir, *port); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "kube-apiserver-local: %v\n", err)
	os.Exit(1)
}

func run(dataDir string, port int) error {
	dir, err := filepath.Abs(dataDir)
	if err != nil {
		return err
	}
	pki, err := ensurePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()
	if port == 0 {
		if port, err = freePort(); err != nil {
			return err
		}
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(apiserverArgs(dir, pki, etcdURL, port))
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := waitReady(server, pki, done); err != nil {
		return err
	}
	if err := writeKubeconfig(kubeconfig, server, pki); err != nil {
		return err
	}
	line, _ := json.Marshal(map[string]any{"ready": true, "kubeconfig": kubeconfig, "server": server, "pid": os.Getpid()})
	fmt.Println(string(line))
	// The API server's command handles SIGTERM/SIGINT itself and returns once it has shut down.
	return <-done
}

func apiserverArgs(dir string, pki *PKI, etcdURL string, port int) []string {
	return []string{
		"--advertise-address=127.0.0.1",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--etcd-servers=" + etcdURL,
		"--authorization-mode=RBAC",
		"--client-ca-file=" + pki.CACert,
		"--tls-cert-file=" + pki.ServingCert,
		"--tls-private-key-file=" + pki.ServingKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.SAPub,
		"--service-account-signing-key-file=" + pki.SAKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--cert-dir=" + filepath.Join(dir, "pki", "generated"),
		"--allow-privileged=true",
		"--endpoint-reconciler-type=none",
		// Kubelets of the pods environment (src/local/pods) register with their bridge's address
		// and check the API server's client certificate, as a cluster's kubelets do (logs, exec).
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--kubelet-client-certificate=" + pki.AdminCert,
		"--kubelet-client-key=" + pki.AdminKey,
		"--profiling=false",
		"--v=0",
	}
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "error"
	client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, client.String(), nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("not ready after 60s")
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitReady(server string, pki *PKI, done <-chan error) error {
	client, err := pki.adminClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		select {
		case err := <-done:
			return fmt.Errorf("kube-apiserver exited before it was ready: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready at %s after 3m", server)
		case <-time.After(200 * time.Millisecond):
		}
		resp, err := client.Get(server + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
	}
}
