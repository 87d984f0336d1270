// Command nodeagent makes the local control plane a one-node cluster: it registers a Node, binds
// pending pods to it and runs each pod's containers as host processes, each pod in its own
// network namespace on a bridge the agent owns. It is test support, not a kubelet: images map to
// local programs (see images.go) and users and read-only root filesystems are not enforced.
//
//	nodeagent --dir DIR [--owner-pid PID] [--kubewsgi-binary PATH] [--venv DIR]
//	nodeagent sandbox SPEC.json   (internal: set up a container's mounts and exec it)
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

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

type config struct {
	dir            string
	nodeName       string
	nodeKubeconfig string
	bindKubeconfig string
	kubewsgiBinary string
	venv           string
	imagesFile     string
	owner          int
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sandbox" {
		os.Exit(sandboxMain(os.Args[2:]))
	}
	var c config
	fs := flag.NewFlagSet("nodeagent", flag.ExitOnError)
	fs.StringVar(&c.dir, "dir", "", "control plane directory (pki/, images.yaml; pod state goes under nodeagent/)")
	fs.StringVar(&c.nodeName, "node-name", "kubewsgi-node", "name of the Node to register")
	fs.StringVar(&c.nodeKubeconfig, "kubeconfig", "", "the node's kubeconfig (default DIR/pki/node.kubeconfig)")
	fs.StringVar(&c.bindKubeconfig, "binder-kubeconfig", "", "kubeconfig allowed to bind pods (default DIR/pki/scheduler.kubeconfig)")
	fs.StringVar(&c.kubewsgiBinary, "kubewsgi-binary", os.Getenv("KUBEWSGI_BINARY"), "the kubewsgi binary that kubewsgi images and `kubewsgi` commands run")
	fs.StringVar(&c.venv, "venv", os.Getenv("KUBEWSGI_VENV"), "Python virtualenv activated in app-image containers")
	fs.StringVar(&c.imagesFile, "images", "", "image reference → app directory map (default DIR/images.yaml)")
	fs.IntVar(&c.owner, "owner-pid", 0, "exit (stopping every pod) when this process no longer exists")
	_ = fs.Parse(os.Args[1:])
	if c.dir == "" {
		fmt.Fprintln(os.Stderr, "nodeagent: --dir is required")
		os.Exit(2)
	}
	c.dir, _ = filepath.Abs(c.dir)
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&c.nodeKubeconfig, filepath.Join(c.dir, "pki", "node.kubeconfig"))
	def(&c.bindKubeconfig, filepath.Join(c.dir, "pki", "scheduler.kubeconfig"))
	def(&c.imagesFile, filepath.Join(c.dir, "images.yaml"))
	if err := run(c); err != nil {
		klog.Errorf("nodeagent: %v", err)
		os.Exit(1)
	}
}

func clientFor(path string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

func run(c config) error {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	if c.owner > 0 {
		go func() {
			for ctx.Err() == nil {
				time.Sleep(time.Second)
				if err := syscall.Kill(c.owner, 0); errors.Is(err, syscall.ESRCH) {
					klog.Infof("owner process %d is gone; stopping", c.owner)
					cancel()
				}
			}
		}()
	}
	node, err := clientFor(c.nodeKubeconfig)
	if err != nil {
		return err
	}
	binder, err := clientFor(c.bindKubeconfig)
	if err != nil {
		return err
	}
	net, err := claimNetwork()
	if err != nil {
		return err
	}
	defer net.close()
	state := filepath.Join(c.dir, "nodeagent")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	a := newAgent(c, node, binder, net, state)
	if err := a.register(ctx); err != nil {
		return err
	}
	ready := filepath.Join(c.dir, "nodeagent.ready")
	if err := os.WriteFile(ready, []byte(net.gateway.String()+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(ready)
	klog.Infof("node %s ready; pods get addresses in %s on bridge %s", c.nodeName, net.subnet, net.bridge)
	a.run(ctx)
	a.stopAll()
	return nil
}
