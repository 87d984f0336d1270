package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// podWorker runs one pod: sandbox, init containers in order, then its containers until the pod is
// deleted (or, for restartPolicy Never/OnFailure, until they are done).
type podWorker struct {
	a   *agent
	uid types.UID
	ctx context.Context // the agent's: done when it exits

	mu          sync.Mutex
	pod         *v1.Pod
	ip          net.IP
	netns, veth string
	dir         string
	startTime   metav1.Time
	initialized bool
	phase       v1.PodPhase
	message     string
	inits, ctrs []*container

	changed  chan struct{} // closed when the pod object is updated
	dirty    chan struct{} // status needs writing
	gone     chan struct{} // pod removed from the API or the agent stops: kill now
	goneOnce sync.Once
}

func newPodWorker(a *agent, p *v1.Pod) *podWorker {
	w := &podWorker{
		a: a, uid: p.UID, pod: p.DeepCopy(), phase: v1.PodPending, startTime: metav1.Now(),
		changed: make(chan struct{}), dirty: make(chan struct{}, 1), gone: make(chan struct{}),
		dir: filepath.Join(a.state, fmt.Sprintf("%s_%s_%s", p.Namespace, p.Name, p.UID)),
	}
	for i := range p.Spec.InitContainers {
		w.inits = append(w.inits, newContainer(w, &p.Spec.InitContainers[i], true))
	}
	for i := range p.Spec.Containers {
		w.ctrs = append(w.ctrs, newContainer(w, &p.Spec.Containers[i], false))
	}
	return w
}

func (w *podWorker) update(p *v1.Pod) {
	w.mu.Lock()
	w.pod = p.DeepCopy()
	// Every waiter sees the change: the channel is closed and replaced.
	close(w.changed)
	w.changed = make(chan struct{})
	w.mu.Unlock()
}

func (w *podWorker) forget() { w.goneOnce.Do(func() { close(w.gone) }) }

func (w *podWorker) current() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func (w *podWorker) markDirty() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// stopping is closed-or-deleted: containers must not (re)start.
func (w *podWorker) stopping() bool {
	select {
	case <-w.gone:
		return true
	default:
	}
	return w.ctx.Err() != nil || w.current().DeletionTimestamp != nil
}

// waitStop returns once the pod is marked for deletion or gone.
func (w *podWorker) waitStop(ctx context.Context, until <-chan struct{}) bool {
	for {
		w.mu.Lock()
		changed := w.changed
		w.mu.Unlock()
		if w.stopping() || ctx.Err() != nil {
			return true
		}
		select {
		case <-changed:
		case <-w.gone:
		case <-ctx.Done():
		case <-until:
			return false
		}
	}
}

func (w *podWorker) run(ctx context.Context) {
	p := w.current()
	log := klog.LoggerWithValues(klog.Background(), "pod", p.Namespace+"/"+p.Name)
	statusCtx, stopStatus := context.WithCancel(context.Background())
	statusDone := make(chan struct{})
	go func() { defer close(statusDone); w.statusLoop(statusCtx) }()

	// Deletion (or the agent stopping) ends the containers wherever the pod's life is.
	finished, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		if w.waitStop(ctx, finished) {
			w.terminate(log)
		}
	}()
	if w.setup(ctx, log) {
		w.runContainers(ctx)
	}
	close(finished)
	<-stopped
	w.teardown(log)
	w.markDirty()
	stopStatus()
	<-statusDone
	select {
	case <-w.gone:
	default:
		if ctx.Err() == nil && w.current().DeletionTimestamp != nil {
			w.a.finalize(ctx, w.current())
			log.Info("pod finalized")
		}
	}
}

// setup makes the pod's directory, volumes, address and network namespace, retrying until it
// works or the pod goes away.
func (w *podWorker) setup(ctx context.Context, log klog.Logger) bool {
	for {
		err := w.trySetup(ctx)
		if err == nil {
			log.Info("sandbox ready", "ip", w.ip.String(), "netns", w.netns)
			w.markDirty()
			return true
		}
		log.Error(err, "pod sandbox")
		w.event(v1.EventTypeWarning, "FailedCreatePodSandBox", "%v", err)
		w.mu.Lock()
		w.message = "sandbox: " + err.Error()
		w.mu.Unlock()
		w.markDirty()
		if w.waitStop(ctx, after(3*time.Second)) {
			return false
		}
	}
}

func (w *podWorker) trySetup(ctx context.Context) error {
	if err := os.MkdirAll(w.dir, 0o755); err != nil {
		return err
	}
	if err := w.writeVolumes(ctx); err != nil {
		return err
	}
	if w.ip == nil {
		ip, err := w.a.net.allocate()
		if err != nil {
			return err
		}
		w.mu.Lock()
		w.ip = ip
		w.mu.Unlock()
	}
	ns, err := w.a.net.sandbox(string(w.uid), w.ip)
	if err != nil {
		return err
	}
	id := strings.ReplaceAll(string(w.uid), "-", "")
	w.mu.Lock()
	w.netns, w.veth, w.message = ns, w.a.net.vethPrefix()+id[:10], ""
	w.mu.Unlock()
	return nil
}

func (w *podWorker) runContainers(ctx context.Context) {
	policy := w.current().Spec.RestartPolicy
	var wg sync.WaitGroup // sidecars: they stop with the pod
	defer wg.Wait()
	for _, c := range w.inits {
		if c.sidecar() {
			// A sidecar keeps running beside the containers, restarted whatever the pod's policy.
			wg.Add(1)
			go func() { defer wg.Done(); c.supervise(ctx, v1.RestartPolicyAlways) }()
			continue
		}
		for {
			code, ok := c.runOnce(ctx)
			if !ok {
				return
			}
			if code == 0 {
				break
			}
			if policy == v1.RestartPolicyNever {
				w.setPhase(v1.PodFailed, fmt.Sprintf("init container %s exited with %d", c.spec.Name, code))
				w.waitStop(ctx, nil)
				return
			}
			if !c.backoff(ctx) {
				return
			}
		}
	}
	w.mu.Lock()
	w.initialized = true
	w.mu.Unlock()
	w.markDirty()

	var mainWG sync.WaitGroup
	for _, c := range w.ctrs {
		mainWG.Add(1)
		go func() { defer mainWG.Done(); c.supervise(ctx, policy) }()
	}
	done := make(chan struct{})
	go func() { mainWG.Wait(); close(done) }()
	if !w.waitStop(ctx, done) {
		// Every container finished for good (restartPolicy Never or OnFailure).
		failed := false
		for _, c := range w.ctrs {
			failed = failed || c.lastExitCode() != 0
		}
		if failed {
			w.setPhase(v1.PodFailed, "")
		} else {
			w.setPhase(v1.PodSucceeded, "")
		}
		w.waitStop(ctx, nil)
	}
	<-done
}

func (w *podWorker) setPhase(phase v1.PodPhase, msg string) {
	w.mu.Lock()
	w.phase, w.message = phase, msg
	w.mu.Unlock()
	w.markDirty()
}

// gracePeriod is what the deletion asked for, else the pod's terminationGracePeriodSeconds.
func (w *podWorker) gracePeriod() time.Duration {
	p := w.current()
	s := int64(30)
	if p.Spec.TerminationGracePeriodSeconds != nil {
		s = *p.Spec.TerminationGracePeriodSeconds
	}
	if p.DeletionGracePeriodSeconds != nil {
		s = *p.DeletionGracePeriodSeconds
	}
	if w.ctx.Err() != nil {
		s = min(s, 2)
	}
	select {
	case <-w.gone:
		s = 1
	default:
	}
	return time.Duration(s) * time.Second
}

// terminate stops every running container at once: preStop, SIGTERM, then SIGKILL at the deadline.
func (w *podWorker) terminate(log klog.Logger) {
	deadline := time.Now().Add(w.gracePeriod())
	var wg sync.WaitGroup
	for _, c := range append(append([]*container{}, w.inits...), w.ctrs...) {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(deadline, true) }()
	}
	wg.Wait()
	log.Info("containers stopped")
}

func (w *podWorker) teardown(log klog.Logger) {
	w.mu.Lock()
	ns, veth, ip := w.netns, w.veth, w.ip
	w.netns, w.ip = "", nil
	w.mu.Unlock()
	if ns != "" {
		w.a.net.teardown(ns, veth)
	}
	if ip != nil {
		w.a.net.release(ip)
	}
	if err := os.RemoveAll(filepath.Join(w.dir, "volumes")); err != nil {
		log.Error(err, "remove volumes")
	}
}

// event records an Event on the pod.
func (w *podWorker) event(kind, reason, format string, args ...any) {
	if w.a.events != nil {
		w.a.events.Eventf(w.current(), kind, reason, format, args...)
	}
}

// after is closed once d has passed.
func after(d time.Duration) <-chan struct{} {
	ch := make(chan struct{})
	time.AfterFunc(d, func() { close(ch) })
	return ch
}
