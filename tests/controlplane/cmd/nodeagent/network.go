package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"k8s.io/klog/v2"
)

const (
	// podRange is the only range pod addresses come from; several agents (parallel tests) split it
	// into slots of 32 addresses, each with its own bridge.
	podRange  = "10.244.0.0/24"
	slotCount = 8
	slotSize  = 32
	lockDir   = "/run/kubewsgi-nodeagent"
)

// network is one claimed slot: a bridge with the gateway address and a pool of pod addresses.
type network struct {
	slot    int
	bridge  string
	subnet  *net.IPNet
	gateway net.IP
	lock    *os.File

	mu   sync.Mutex
	used map[string]bool // pod IP → in use
}

// claimNetwork takes the first free slot (a lock file held for the agent's life) and builds its
// bridge afresh, removing whatever a killed agent of the same slot left behind.
func claimNetwork() (*network, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	_, all, _ := net.ParseCIDR(podRange)
	for slot := 0; slot < slotCount; slot++ {
		f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("slot%d.lock", slot)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		base := all.IP.To4()
		ip := net.IPv4(base[0], base[1], base[2], byte(slot*slotSize)).To4()
		n := &network{
			slot:    slot,
			bridge:  fmt.Sprintf("kubewsgi%d", slot),
			subnet:  &net.IPNet{IP: ip, Mask: net.CIDRMask(27, 32)},
			gateway: net.IPv4(ip[0], ip[1], ip[2], ip[3]+1).To4(),
			lock:    f,
			used:    map[string]bool{},
		}
		n.cleanup()
		ones, _ := n.subnet.Mask.Size()
		if err := ipCmd("link", "add", n.bridge, "type", "bridge"); err != nil {
			n.close()
			return nil, err
		}
		if err := ipCmd("addr", "add", fmt.Sprintf("%s/%d", n.gateway, ones), "dev", n.bridge); err != nil {
			n.close()
			return nil, err
		}
		if err := ipCmd("link", "set", n.bridge, "up"); err != nil {
			n.close()
			return nil, err
		}
		return n, nil
	}
	return nil, fmt.Errorf("all %d node agent network slots of %s are taken", slotCount, podRange)
}

func (n *network) nsPrefix() string   { return fmt.Sprintf("kubewsgi%d-", n.slot) }
func (n *network) vethPrefix() string { return fmt.Sprintf("kw%d-", n.slot) }

// cleanup removes this slot's bridge, veths and namespaces (left by a killed agent, or ours on exit).
func (n *network) cleanup() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], n.nsPrefix()) {
			_ = ipCmd("netns", "del", f[0])
		}
	}
	links, _ := net.Interfaces()
	for _, l := range links {
		if strings.HasPrefix(l.Name, n.vethPrefix()) || l.Name == n.bridge {
			_ = ipCmd("link", "del", l.Name)
		}
	}
}

func (n *network) close() {
	n.cleanup()
	if n.lock != nil {
		n.lock.Close()
	}
}

// contains reports whether ip is one this agent hands out (probes contact nothing else).
func (n *network) contains(ip net.IP) bool { return n.subnet.Contains(ip) }

func (n *network) allocate() (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	base := n.subnet.IP.To4()
	for i := 2; i < slotSize-1; i++ {
		ip := net.IPv4(base[0], base[1], base[2], base[3]+byte(i)).To4()
		if !n.used[ip.String()] {
			n.used[ip.String()] = true
			return ip, nil
		}
	}
	return nil, fmt.Errorf("no free pod address in %s", n.subnet)
}

func (n *network) release(ip net.IP) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.used, ip.String())
}

// sandbox creates a pod's network namespace with a veth into the bridge and returns its name.
func (n *network) sandbox(uid string, ip net.IP) (string, error) {
	id := strings.ReplaceAll(uid, "-", "")
	ns := n.nsPrefix() + id[:12]
	veth := n.vethPrefix() + id[:10]
	_ = ipCmd("netns", "del", ns)
	_ = ipCmd("link", "del", veth)
	ones, _ := n.subnet.Mask.Size()
	steps := [][]string{
		{"netns", "add", ns},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"link", "set", veth, "master", n.bridge, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", fmt.Sprintf("%s/%d", ip, ones), "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", "default", "via", n.gateway.String()},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			n.teardown(ns, veth)
			return "", err
		}
	}
	return ns, nil
}

func (n *network) teardown(ns, veth string) {
	if err := ipCmd("netns", "del", ns); err != nil {
		klog.Warningf("remove network namespace %s: %v", ns, err)
	}
	_ = ipCmd("link", "del", veth)
}

func ipCmd(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
