package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
)

const (
	backoffStart = time.Second
	backoffMax   = 30 * time.Second
	// A container that ran this long before exiting restarts without waiting.
	backoffReset = time.Minute
	maxMessage   = 4096
)

// container is one container of a pod: its current process and what its status reports.
type container struct {
	w    *podWorker
	spec *v1.Container
	init bool

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	started  bool
	ready    bool
	restarts int32
	delay    time.Duration
	state    v1.ContainerState
	last     v1.ContainerState
	killedBy string // why the agent stopped it (liveness), for the terminated reason
	cancel   context.CancelFunc
}

func newContainer(w *podWorker, spec *v1.Container, init bool) *container {
	return &container{w: w, spec: spec, init: init, delay: backoffStart,
		state: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: "PodInitializing"}}}
}

// sidecar is an init container that runs beside the others (restartPolicy Always).
func (c *container) sidecar() bool {
	return c.init && c.spec.RestartPolicy != nil && *c.spec.RestartPolicy == v1.ContainerRestartPolicyAlways
}

func (c *container) files() (log, term string) {
	base := filepath.Join(c.w.dir, "containers", c.spec.Name)
	return base + ".log", base + ".termination-log"
}

func (c *container) startFailed(err error) {
	c.setWaiting(startReason(err), err.Error())
	c.w.event(v1.EventTypeWarning, "Failed", "Error: %s: %v", startReason(err), err)
}

func (c *container) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason, Message: msg}}
	c.mu.Unlock()
	c.w.markDirty()
}

// start launches the process inside the pod's sandbox; its exit closes c.exited.
func (c *container) start(ctx context.Context) error {
	spec, err := c.w.sandboxSpec(ctx, c)
	if err != nil {
		return err
	}
	logPath, term := c.files()
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(term, nil, 0o666); err != nil {
		return err
	}
	specPath := filepath.Join(filepath.Dir(logPath), c.spec.Name+".json")
	if err := writeJSON(specPath, spec); err != nil {
		return err
	}
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	self, _ := os.Executable()
	c.w.mu.Lock()
	netns := c.w.netns
	c.w.mu.Unlock()
	cmd := exec.Command("ip", "netns", "exec", netns, self, "sandbox", specPath)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so everything the container starts is killed with it; and killed by
	// the kernel if the agent dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); out.Close(); close(exited) }()
	pctx, cancel := context.WithCancel(ctx)
	c.mu.Lock()
	c.cmd, c.exited, c.cancel, c.killedBy = cmd, exited, cancel, ""
	c.state = v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: metav1.Now()}}
	c.started = c.spec.StartupProbe == nil
	c.ready = (!c.init || c.sidecar()) && c.spec.ReadinessProbe == nil && c.started
	c.mu.Unlock()
	c.w.markDirty()
	c.w.event(v1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	if !c.init || c.sidecar() {
		go c.probe(pctx)
	}
	if c.w.stopping() {
		// Deletion raced with this start: the pod's terminate may have missed it.
		go c.stop(time.Now().Add(time.Second), false)
	}
	return nil
}

// waitExit waits for the process and records its terminated state; it returns the exit code.
func (c *container) waitExit() int32 {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	<-exited
	// Whatever the main process left behind in its group goes with it.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	code := int32(cmd.ProcessState.ExitCode())
	reason := "Completed"
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int32(ws.Signal())
	}
	if code != 0 {
		reason = "Error"
	}
	c.mu.Lock()
	if c.killedBy != "" {
		reason = c.killedBy
	}
	started := metav1.Now()
	if c.state.Running != nil {
		started = c.state.Running.StartedAt
	}
	c.cancel()
	c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, Message: c.message(code), StartedAt: started, FinishedAt: metav1.Now(),
		ContainerID: c.id(cmd.Process.Pid),
	}}
	c.ready, c.cmd = false, nil
	c.mu.Unlock()
	c.w.markDirty()
	return code
}

// message is the termination log, or the log tail for FallbackToLogsOnError after a failure.
func (c *container) message(code int32) string {
	logPath, term := c.files()
	if b, err := os.ReadFile(term); err == nil && len(b) > 0 {
		return tail(b, maxMessage)
	}
	if code != 0 && c.spec.TerminationMessagePolicy == v1.TerminationMessageFallbackToLogsOnError {
		if b, err := os.ReadFile(logPath); err == nil {
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			return tail([]byte(strings.Join(lines, "\n")), 2048)
		}
	}
	return ""
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func (c *container) id(pid int) string {
	return fmt.Sprintf("kubewsgi://%s-%s-%d", c.w.uid, c.spec.Name, pid)
}

func (c *container) lastExitCode() int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Terminated != nil {
		return c.state.Terminated.ExitCode
	}
	return 0
}

// runOnce runs an init container to its end; ok is false when the pod stops first.
func (c *container) runOnce(ctx context.Context) (int32, bool) {
	for {
		if c.w.stopping() {
			return 0, false
		}
		err := c.start(ctx)
		if err == nil {
			break
		}
		c.startFailed(err)
		if c.w.waitStop(ctx, after(3*time.Second)) {
			return 0, false
		}
	}
	code := c.waitExit()
	return code, !c.w.stopping()
}

// supervise runs a container and restarts it per the pod's restartPolicy until the pod stops.
func (c *container) supervise(ctx context.Context, policy v1.RestartPolicy) {
	for !c.w.stopping() {
		if err := c.start(ctx); err != nil {
			c.startFailed(err)
			if c.w.waitStop(ctx, after(3*time.Second)) {
				return
			}
			continue
		}
		began := time.Now()
		code := c.waitExit()
		if c.w.stopping() {
			return
		}
		if policy == v1.RestartPolicyNever || (policy == v1.RestartPolicyOnFailure && code == 0) {
			return
		}
		if time.Since(began) > backoffReset {
			c.delay = backoffStart
		}
		if !c.backoff(ctx) {
			return
		}
	}
}

// backoff moves the terminated state to lastState, waits the crash-loop delay and counts a restart.
func (c *container) backoff(ctx context.Context) bool {
	c.mu.Lock()
	c.last = c.state
	delay := c.delay
	c.delay = min(2*c.delay, backoffMax)
	c.state = v1.ContainerState{Waiting: &v1.ContainerStateWaiting{
		Reason: "CrashLoopBackOff", Message: fmt.Sprintf("back-off %s restarting failed container %s", delay, c.spec.Name)}}
	c.restarts++
	c.mu.Unlock()
	c.w.markDirty()
	c.w.event(v1.EventTypeWarning, "BackOff", "Back-off %s restarting failed container %s", delay, c.spec.Name)
	return !c.w.waitStop(ctx, after(delay))
}

type startError struct {
	reason string
	err    error
}

func (e *startError) Error() string { return e.err.Error() }

func startReason(err error) string {
	var se *startError
	if errors.As(err, &se) {
		return se.reason
	}
	return "CreateContainerError"
}

// stop runs preStop (when asked), sends SIGTERM and SIGKILLs the group at the deadline.
func (c *container) stop(deadline time.Time, preStop bool) {
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	log := klog.LoggerWithValues(klog.Background(), "pod", c.w.current().Namespace+"/"+c.w.current().Name, "container", c.spec.Name)
	if preStop && c.spec.Lifecycle != nil && c.spec.Lifecycle.PreStop != nil {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		done := make(chan error, 1)
		go func() { done <- c.runHandler(ctx, c.spec.Lifecycle.PreStop) }()
		select {
		case err := <-done:
			if err != nil {
				log.Error(err, "preStop hook")
			}
		case <-exited:
		case <-c.w.gone:
		}
		cancel()
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-after(time.Until(deadline)):
		log.Info("grace period over; killing")
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}
