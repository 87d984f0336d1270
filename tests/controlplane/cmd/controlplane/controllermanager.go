package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var getOpts = metav1.GetOptions{}

// controllerManager supervises kube-controller-manager as a child process of this binary: it
// installs its own signal handling and global metrics, so it cannot share the API server's
// process.
type controllerManager struct {
	dir         string
	p           *pki
	kubeconfig  string
	controllers []string

	mu      sync.Mutex
	cmd     *exec.Cmd
	stopped bool
	exited  chan struct{}
}

func (c *controllerManager) args() []string {
	return []string{
		"--kubeconfig=" + c.kubeconfig,
		"--leader-elect=false",
		// One identity per controller, as in real clusters, so RBAC for each is exercised.
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + c.p.SAKey,
		"--root-ca-file=" + c.p.CACert,
		"--cluster-signing-cert-file=" + c.p.CACert,
		"--cluster-signing-key-file=" + c.p.CAKey,
		"--cluster-name=kubewsgi-local",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--controllers=" + strings.Join(c.controllers, ","),
		// No serving port: nothing scrapes it, and it saves a port and authn delegation.
		"--secure-port=0",
		"--profiling=false",
	}
}

// start launches the child and restarts it if it dies before stop is called.
func (c *controllerManager) start(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(c.dir, "controller-manager.log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	launch := func() (*exec.Cmd, error) {
		cmd := exec.Command(exe, c.args()...)
		cmd.Args[0] = "kube-controller-manager"
		cmd.Stdout, cmd.Stderr = log, log
		// If this process dies without stopping the child, the kernel kills it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		return cmd, cmd.Start()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return ctx.Err()
	}
	cmd, err := launch()
	if err != nil {
		return fmt.Errorf("start kube-controller-manager: %w", err)
	}
	c.cmd = cmd
	c.exited = make(chan struct{})
	go func() {
		for {
			err := c.cmd.Wait()
			c.mu.Lock()
			if c.stopped {
				close(c.exited)
				c.mu.Unlock()
				return
			}
			fmt.Fprintf(os.Stderr, "kube-controller-manager exited (%v); restarting\n", err)
			time.Sleep(2 * time.Second)
			next, err := launch()
			if err != nil {
				fmt.Fprintf(os.Stderr, "restart kube-controller-manager: %v\n", err)
				c.stopped = true
				close(c.exited)
				c.mu.Unlock()
				return
			}
			c.cmd = next
			c.mu.Unlock()
		}
	}()
	return nil
}

// stop sends SIGTERM, waits up to shutdownGrace, then kills.
func (c *controllerManager) stop() {
	c.mu.Lock()
	if c.stopped || c.cmd == nil {
		c.stopped = true
		c.mu.Unlock()
		return
	}
	c.stopped = true
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(shutdownGrace):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func newClient(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// waitFor polls check every 250ms until it succeeds, ctx ends or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
