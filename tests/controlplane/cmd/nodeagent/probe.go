package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/klog/v2"
)

// probe runs the container's startup, then readiness and liveness probes until ctx ends (the
// process exited or the pod stops).
func (c *container) probe(ctx context.Context) {
	if p := c.spec.StartupProbe; p != nil {
		if !c.loop(ctx, p, func(ok bool, failures int32) bool {
			if ok {
				c.mu.Lock()
				c.started, c.ready = true, c.spec.ReadinessProbe == nil
				c.mu.Unlock()
				c.w.markDirty()
				return false
			}
			if failures >= threshold(p.FailureThreshold, 3) {
				c.kill(ctx, "startup probe failed")
				return false
			}
			return true
		}) {
			return
		}
	}
	if p := c.spec.ReadinessProbe; p != nil {
		go c.loop(ctx, p, func(ok bool, failures int32) bool {
			c.mu.Lock()
			was := c.ready
			if ok {
				c.ready = true
			} else if failures >= threshold(p.FailureThreshold, 3) {
				c.ready = false
			}
			changed := was != c.ready
			c.mu.Unlock()
			if changed {
				c.w.markDirty()
			}
			return true
		})
	}
	if p := c.spec.LivenessProbe; p != nil {
		c.loop(ctx, p, func(ok bool, failures int32) bool {
			if !ok && failures >= threshold(p.FailureThreshold, 3) {
				c.kill(ctx, "liveness probe failed")
				return false
			}
			return true
		})
	}
}

// kind names a probe of the container for events.
func kind(c *v1.Container, p *v1.Probe) string {
	switch p {
	case c.StartupProbe:
		return "Startup"
	case c.LivenessProbe:
		return "Liveness"
	}
	return "Readiness"
}

func threshold(v, def int32) int32 {
	if v > 0 {
		return v
	}
	return def
}

// loop runs p every period; on reports each result with the count of consecutive failures (a
// success counts only after successThreshold in a row) and returns false to stop. loop reports
// whether it ended because on asked (false when ctx ended).
func (c *container) loop(ctx context.Context, p *v1.Probe, on func(ok bool, failures int32) bool) bool {
	period := time.Duration(threshold(p.PeriodSeconds, 10)) * time.Second
	timeout := time.Duration(threshold(p.TimeoutSeconds, 1)) * time.Second
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Duration(p.InitialDelaySeconds) * time.Second):
	}
	var failures, successes int32
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.runHandler(pctx, &v1.LifecycleHandler{HTTPGet: p.HTTPGet, TCPSocket: p.TCPSocket, Exec: p.Exec})
		cancel()
		if ctx.Err() != nil {
			return false
		}
		ok := err == nil
		if ok {
			failures, successes = 0, successes+1
			ok = successes >= threshold(p.SuccessThreshold, 1)
		} else {
			failures, successes = failures+1, 0
			c.w.event(v1.EventTypeWarning, "Unhealthy", "%s probe failed: %v", kind(c.spec, p), err)
		}
		if !on(ok, failures) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(period):
		}
	}
}

// kill stops a container whose probe failed; the supervisor restarts it per the restart policy.
func (c *container) kill(ctx context.Context, why string) {
	klog.Infof("pod %s container %s: %s; restarting", c.w.current().Name, c.spec.Name, why)
	c.w.event(v1.EventTypeNormal, "Killing", "Container %s %s, will be restarted", c.spec.Name, why)
	grace := c.w.gracePeriod()
	c.stop(time.Now().Add(grace), true)
}

// runHandler runs a probe or lifecycle action; only the pod's own address (or loopback inside
// its namespace, for exec) is ever contacted.
func (c *container) runHandler(ctx context.Context, h *v1.LifecycleHandler) error {
	switch {
	case h.Sleep != nil:
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
			return nil
		}
	case h.HTTPGet != nil:
		return c.httpGet(ctx, h.HTTPGet)
	case h.TCPSocket != nil:
		addr, err := c.address(h.TCPSocket.Host, h.TCPSocket.Port)
		if err != nil {
			return err
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return conn.Close()
	case h.Exec != nil:
		return c.exec(ctx, h.Exec.Command)
	}
	return fmt.Errorf("unsupported handler")
}

func (c *container) address(host string, port intstr.IntOrString) (string, error) {
	c.w.mu.Lock()
	ip := c.w.ip
	c.w.mu.Unlock()
	if host != "" {
		ip = net.ParseIP(host)
	}
	if ip == nil || !c.w.a.net.contains(ip) {
		return "", fmt.Errorf("probe host %q is outside the pod network", host)
	}
	n := port.IntValue()
	if port.Type == intstr.String {
		n = 0
		for _, p := range c.spec.Ports {
			if p.Name == port.StrVal {
				n = int(p.ContainerPort)
			}
		}
		if n == 0 {
			return "", fmt.Errorf("no port named %q", port.StrVal)
		}
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(n)), nil
}

var probeTransport = &http.Transport{
	DisableKeepAlives: true,
	TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as kubelet: probes do not verify
}

func (c *container) httpGet(ctx context.Context, g *v1.HTTPGetAction) error {
	addr, err := c.address(g.Host, g.Port)
	if err != nil {
		return err
	}
	scheme := "http"
	if g.Scheme == v1.URISchemeHTTPS {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+g.Path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "kube-probe/1.36")
	for _, h := range g.HTTPHeaders {
		req.Header.Set(h.Name, h.Value)
	}
	client := &http.Client{Transport: probeTransport, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// exec runs a command in the container's sandbox (its network and mounts).
func (c *container) exec(ctx context.Context, argv []string) error {
	spec, err := c.w.sandboxSpec(ctx, c)
	if err != nil {
		return err
	}
	if len(argv) == 0 {
		return fmt.Errorf("exec handler without a command")
	}
	spec.Argv = append([]string{c.w.resolveProgram(argv[0])}, argv[1:]...)
	path := fmt.Sprintf("%s/containers/%s.exec-%d.json", c.w.dir, c.spec.Name, time.Now().UnixNano())
	defer os.Remove(path)
	if err := writeJSON(path, spec); err != nil {
		return err
	}
	c.w.mu.Lock()
	netns := c.w.netns
	c.w.mu.Unlock()
	self, _ := os.Executable()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, self, "sandbox", path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, tail(out, 512))
	}
	return nil
}
