package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// startEtcd runs a single-member etcd inside this process, listening on loopback only.
// Fsync is off: the data lives only as long as a test run and losing it on a crash is fine,
// while fsync on a shared 2-core machine makes every API write slow.
func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, string, error) {
	cfg := embed.NewConfig()
	cfg.Name = "kubewsgi-local"
	cfg.Dir = filepath.Join(dir, "etcd")
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = true
	// At warn etcd logs a line per request on a busy machine.
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	// A small snapshot interval and periodic compaction keep memory flat over long suites.
	cfg.SnapshotCount = 5000
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"
	cfg.QuotaBackendBytes = 2 << 30

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("etcd failed: %w", err)
	case <-time.After(120 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("etcd not ready after 120s")
	}
	return e, clientURL.String(), nil
}

// freePorts picks n distinct free loopback ports below the kernel's ephemeral range. Ports from
// that range (what binding port 0 returns) can be taken by any outgoing connection between the
// moment they are chosen and the moment etcd or the API server binds them; ports below it are only
// ever taken on purpose. Each candidate is checked by binding it, and all stay bound until every
// port is chosen.
func freePorts(n int) ([]int, error) {
	low := ephemeralLow()
	ports := make([]int, 0, n)
	listeners := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt > 1000 {
			return nil, fmt.Errorf("no free loopback port in %d..%d", minPort, low-1)
		}
		port := 0 // ephemeral, when the range leaves no room below it
		if low-minPort > 1000 {
			port = minPort + rand.IntN(low-minPort)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

const minPort = 10000

// portsFile records the ports of the last run (etcd client, etcd peer, API server), so a restart
// with --reuse-ports listens where running clients and the kubeconfigs already point.
const portsFile = "ports"

// choosePorts returns the etcd client, etcd peer and API server ports: those of DIR/ports when
// reuse is set (an error if there are none), else free ones, recorded in DIR/ports either way.
func choosePorts(dir string, reuse bool) ([]int, error) {
	path := filepath.Join(dir, portsFile)
	var ports []int
	if reuse {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--reuse-ports: no ports of a previous run: %w", err)
		}
		for _, f := range strings.Fields(string(data)) {
			port, err := strconv.Atoi(f)
			if err != nil || port <= 0 || port > 65535 {
				return nil, fmt.Errorf("--reuse-ports: %s holds %q, not a port", path, f)
			}
			ports = append(ports, port)
		}
		if len(ports) != 3 {
			return nil, fmt.Errorf("--reuse-ports: %s holds %d ports, want 3", path, len(ports))
		}
	} else {
		var err error
		if ports, err = freePorts(3); err != nil {
			return nil, fmt.Errorf("free ports: %w", err)
		}
	}
	text := fmt.Sprintf("%d %d %d\n", ports[0], ports[1], ports[2])
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("record ports: %w", err)
	}
	return ports, nil
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768 when unknown).
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return 32768
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return 32768
	}
	return low
}

// closeEtcd stops etcd, giving up after shutdownGrace: a client that never hangs up must not
// keep the process alive.
func closeEtcd(e *embed.Etcd) {
	done := make(chan struct{})
	go func() {
		e.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		fmt.Fprintf(os.Stderr, "etcd still closing after %s; exiting\n", shutdownGrace)
	}
}
