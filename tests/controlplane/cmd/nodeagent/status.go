package main

import (
	"context"
	"encoding/json"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// statusLoop writes (a JSON merge patch: lists such as conditions are replaced whole, so no stale
// field survives) the pod status whenever it changed, coalescing bursts; it writes once more
// after ctx ends so the final state is recorded.
func (w *podWorker) statusLoop(ctx context.Context) {
	var last []byte
	for {
		select {
		case <-w.dirty:
		case <-ctx.Done():
			w.writeStatus(&last)
			return
		}
		w.writeStatus(&last)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *podWorker) writeStatus(last *[]byte) {
	if w.ctx.Err() != nil {
		return
	}
	p := w.current()
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"uid": p.UID},
		"status":   w.status(),
	})
	if err != nil || string(patch) == string(*last) {
		return
	}
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	_, err = w.a.node.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			klog.Warningf("pod %s/%s status: %v", p.Namespace, p.Name, err)
			w.markDirty() // try again on the next round
		}
		return
	}
	*last = patch
}

func condition(t v1.PodConditionType, ok bool, reason string) v1.PodCondition {
	s := v1.ConditionFalse
	if ok {
		s = v1.ConditionTrue
		reason = ""
	}
	return v1.PodCondition{Type: t, Status: s, Reason: reason}
}

// status is the pod status from what runs now.
func (w *podWorker) status() v1.PodStatus {
	p := w.current()
	w.mu.Lock()
	ip, initialized, phase, message, started := w.ip, w.initialized, w.phase, w.message, w.startTime
	netReady := w.netns != ""
	w.mu.Unlock()

	st := v1.PodStatus{
		Phase: phase, Message: message, HostIP: w.a.net.gateway.String(), StartTime: &started,
		HostIPs: []v1.HostIP{{IP: w.a.net.gateway.String()}}, QOSClass: v1.PodQOSBestEffort,
	}
	if p.Status.QOSClass != "" {
		st.QOSClass = p.Status.QOSClass
	}
	if ip != nil {
		st.PodIP = ip.String()
		st.PodIPs = []v1.PodIP{{IP: ip.String()}}
	}
	allReady, anyRunning := len(w.ctrs) > 0, false
	for _, c := range w.inits {
		st.InitContainerStatuses = append(st.InitContainerStatuses, c.status())
	}
	for _, c := range w.ctrs {
		cs := c.status()
		allReady = allReady && cs.Ready
		anyRunning = anyRunning || cs.State.Running != nil
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	if phase == v1.PodPending && initialized && anyRunning {
		st.Phase = v1.PodRunning
	}
	if phase != v1.PodPending {
		allReady = false
	}
	// Kubelet keeps conditions' transition times; kept simple here: the time of this write.
	now := metav1.Now()
	st.Conditions = []v1.PodCondition{
		condition(v1.PodReadyToStartContainers, netReady, ""),
		condition(v1.PodInitialized, initialized, "ContainersNotInitialized"),
		condition(v1.ContainersReady, allReady, "ContainersNotReady"),
		condition(v1.PodReady, allReady, "ContainersNotReady"),
		condition(v1.PodScheduled, true, ""),
	}
	for i := range st.Conditions {
		st.Conditions[i].LastTransitionTime = w.transition(st.Conditions[i], now)
	}
	return st
}

// transition keeps a condition's last transition time while its status stays the same.
func (w *podWorker) transition(c v1.PodCondition, now metav1.Time) metav1.Time {
	for _, old := range w.current().Status.Conditions {
		if old.Type == c.Type && old.Status == c.Status && !old.LastTransitionTime.IsZero() {
			return old.LastTransitionTime
		}
	}
	return now
}

func (c *container) status() v1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	started := c.started
	cs := v1.ContainerStatus{
		Name: c.spec.Name, Image: c.spec.Image, ImageID: "kubewsgi://" + c.spec.Image,
		Ready: c.ready, Started: &started, RestartCount: c.restarts,
		State: c.state, LastTerminationState: c.last,
	}
	if c.cmd != nil && c.cmd.Process != nil {
		cs.ContainerID = c.id(c.cmd.Process.Pid)
	} else if c.state.Terminated != nil {
		cs.ContainerID = c.state.Terminated.ContainerID
	}
	if c.init && !c.sidecar() {
		cs.Ready = c.state.Terminated != nil && c.state.Terminated.ExitCode == 0
	}
	return cs
}
