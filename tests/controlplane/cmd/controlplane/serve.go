package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const (
	serviceCIDR = "10.0.0.0/16"
	// serviceIP is the first address of serviceCIDR: the in-cluster `kubernetes` Service.
	serviceIP = "10.0.0.1"
	// fullControllers is every controller the controller-manager runs by default.
	fullControllers = "*"
	// shutdownGrace bounds each step of stopping, so `down` takes seconds, not minutes.
	shutdownGrace = 10 * time.Second
)

// lightControllers keep a bare API server behaving like a cluster for everything that does not
// need workloads to run: service accounts exist (pods are admitted), namespaces can be deleted,
// owner references cascade, and the aggregated admin/edit/view roles are filled in.
var lightControllers = []string{
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"namespace-controller",
	"garbage-collector-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
}

// serve runs etcd and kube-apiserver in this process and the controller-manager as a child,
// writes DIR/kubeconfig, and creates DIR/ready once the cluster accepts work.
func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory (kubeconfig, pki, etcd data, logs)")
	full := fs.Bool("full", false, "run every controller-manager controller (Deployments, ReplicaSets, EndpointSlices, ...)")
	owner := fs.Int("owner-pid", 0, "shut down when this process no longer exists (a test run that was killed)")
	reuse := fs.Bool("reuse-ports", false, "listen on the ports of the previous run in DIR (DIR/ports), so running clients reconnect to the same address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "serve: --dir is required")
		return 2
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	// A first line before any work: a log that stays empty then means the process never ran.
	fmt.Fprintf(os.Stderr, "controlplane: serving %s (pid %d)\n", abs, os.Getpid())
	if err := run(abs, *full, *owner, *reuse); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	return 0
}

func run(dir string, full bool, owner int, reuse bool) error {
	os.Remove(filepath.Join(dir, "ready"))
	p, err := ensurePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	ports, err := choosePorts(dir, reuse)
	if err != nil {
		return err
	}
	etcdClientPort, etcdPeerPort, apiPort := ports[0], ports[1], ports[2]

	etcd, etcdURL, err := startEtcd(dir, etcdClientPort, etcdPeerPort)
	if err != nil {
		return err
	}
	defer closeEtcd(etcd)
	fmt.Fprintf(os.Stderr, "controlplane: etcd ready at %s; starting kube-apiserver on port %d\n", etcdURL, apiPort)

	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, p.CACert, "admin", credential{Token: p.AdminToken}); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	// Components authenticate with client certificates, as in kubeadm clusters: the user and
	// groups come from the certificate, so the Node authorizer and default RBAC apply to them.
	for _, id := range clientIdentities {
		cert, key := p.clientCert(id.Name)
		path := filepath.Join(p.Dir, id.Name+".kubeconfig")
		if err := writeKubeconfig(path, server, p.CACert, id.User, credential{CertFile: cert, KeyFile: key}); err != nil {
			return fmt.Errorf("%s kubeconfig: %w", id.Name, err)
		}
	}
	cmKubeconfig := filepath.Join(p.Dir, "controller-manager.kubeconfig")

	// The API server installs its own SIGTERM/SIGINT handler and returns from Execute once it
	// has shut down; this handler only stops the controller-manager alongside it.
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if owner > 0 {
		go func() {
			if ownerGone(ctx, owner) {
				// Same path as `down`: the API server's handler and ours both see it.
				_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			}
		}()
	}

	cmd := apiserver.NewAPIServerCommand()
	cmd.SetArgs(apiserverArgs(p, etcdURL, apiPort))
	apiDone := make(chan error, 1)
	go func() { apiDone <- cmd.Execute() }()

	controllers := lightControllers
	if full {
		controllers = []string{fullControllers}
	}
	cm := &controllerManager{dir: dir, p: p, kubeconfig: cmKubeconfig, controllers: controllers}
	readyErr := make(chan error, 1)
	go func() { readyErr <- becomeReady(ctx, dir, kubeconfig, cm) }()

	for {
		select {
		case err := <-apiDone:
			cm.stop()
			if err != nil {
				return fmt.Errorf("kube-apiserver: %w", err)
			}
			return errors.New("kube-apiserver stopped on its own")
		case err := <-readyErr:
			if err != nil {
				cm.stop()
				return err
			}
			readyErr = nil
		case <-ctx.Done():
			// Stop the controller-manager first: its watches would otherwise hold the API
			// server's graceful shutdown open for a minute. The data is disposable, so the
			// API server gets a short grace period, not the production one.
			cm.stop()
			select {
			case <-apiDone:
			case <-time.After(shutdownGrace):
				fmt.Fprintf(os.Stderr, "kube-apiserver still shutting down after %s; exiting\n", shutdownGrace)
			}
			return nil
		}
	}
}

// apiserverArgs are the flags of a small single-node API server: loopback only, RBAC and Node
// authorization, the default admission plugins (PodSecurity among them), and no priority and
// fairness (its queues cost CPU and only matter under contention between many clients).
func apiserverArgs(p *pki, etcdURL string, port int) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir=" + p.Dir,
		"--tls-cert-file=" + p.ServingCert,
		"--tls-private-key-file=" + p.ServingKey,
		"--client-ca-file=" + p.CACert,
		"--token-auth-file=" + p.TokenFile,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + p.SAPub,
		"--service-account-signing-key-file=" + p.SAKey,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		// Privileged pods are allowed cluster-wide, as in most clusters, so that refusing them
		// is left to Pod Security admission per namespace.
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--event-ttl=30m",
		// The `kubernetes` Service's endpoints cannot name a loopback address; nothing in this
		// cluster reaches the API through that Service.
		"--endpoint-reconciler-type=none",
	}
}

// becomeReady waits until the API server answers /readyz, starts the controller-manager, waits
// for the default service account (proof the controllers run) and then creates DIR/ready.
func becomeReady(ctx context.Context, dir, kubeconfig string, cm *controllerManager) error {
	client, err := newClient(kubeconfig)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, 180*time.Second, "kube-apiserver /readyz", func(ctx context.Context) error {
		return client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
	}); err != nil {
		return err
	}
	if err := cm.start(ctx); err != nil {
		return err
	}
	if err := waitFor(ctx, 180*time.Second, "service account default/default", func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", getOpts)
		return err
	}); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ready"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// ownerGone reports true once process pid no longer exists, false when ctx ends first.
func ownerGone(ctx context.Context, pid int) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			fmt.Fprintf(os.Stderr, "owner process %d is gone; shutting down\n", pid)
			return true
		}
	}
}
