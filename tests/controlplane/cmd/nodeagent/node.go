package main

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
)

const (
	leaseSeconds   = 40
	renewInterval  = 10 * time.Second
	statusInterval = time.Minute
)

// agent is the node: it owns the Node object, its Lease and one worker per pod bound to it.
type agent struct {
	c      config
	node   *kubernetes.Clientset
	binder *kubernetes.Clientset
	net    *network
	state  string

	events record.EventRecorder

	mu   sync.Mutex
	pods map[types.UID]*podWorker
	done map[types.UID]bool // pods whose worker finished; forgotten once the API drops them
	wg   sync.WaitGroup
}

func newAgent(c config, node, binder *kubernetes.Clientset, net *network, state string) *agent {
	return &agent{c: c, node: node, binder: binder, net: net, state: state, pods: map[types.UID]*podWorker{}, done: map[types.UID]bool{}}
}

func (a *agent) nodeStatus() v1.NodeStatus {
	now := metav1.Now()
	capacity := v1.ResourceList{
		v1.ResourceCPU:    resource.MustParse("2"),
		v1.ResourceMemory: resource.MustParse("8Gi"),
		v1.ResourcePods:   *resource.NewQuantity(slotSize-3, resource.DecimalSI),
	}
	return v1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       v1.NodeRunning,
		Conditions: []v1.NodeCondition{{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
			Message: "kubewsgi node agent is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: a.net.gateway.String()},
			{Type: v1.NodeHostName, Address: a.c.nodeName},
		},
		NodeInfo: v1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.36.3", ContainerRuntimeVersion: "kubewsgi-nodeagent://1"},
	}
}

// register creates (or refreshes) the Node and marks it Ready.
func (a *agent) register(ctx context.Context) error {
	nodes := a.node.CoreV1().Nodes()
	n, err := nodes.Get(ctx, a.c.nodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		n, err = nodes.Create(ctx, &v1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:   a.c.nodeName,
			Labels: map[string]string{"kubernetes.io/hostname": a.c.nodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
		}}, metav1.CreateOptions{})
	}
	if err != nil {
		return err
	}
	return a.postStatus(ctx, n)
}

// postStatus patches only the status: a full update would carry a stale copy of the taints the
// node controllers add, which NodeRestriction refuses.
func (a *agent) postStatus(ctx context.Context, n *v1.Node) error {
	patch, err := json.Marshal(map[string]any{"status": a.nodeStatus()})
	if err != nil {
		return err
	}
	_, err = a.node.CoreV1().Nodes().Patch(ctx, n.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	return err
}

// heartbeat renews the node Lease (what the node lifecycle controller watches) and reposts status.
func (a *agent) heartbeat(ctx context.Context) {
	leases := a.node.CoordinationV1().Leases("kube-node-lease")
	lastStatus := time.Now()
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, a.c.nodeName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = leases.Create(ctx, &coordv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: a.c.nodeName, Namespace: "kube-node-lease"},
				Spec:       coordv1.LeaseSpec{HolderIdentity: ptr.To(a.c.nodeName), LeaseDurationSeconds: ptr.To(int32(leaseSeconds)), RenewTime: &now},
			}, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			klog.Warningf("renew node lease: %v", err)
		}
		if time.Since(lastStatus) > statusInterval {
			if n, err := a.node.CoreV1().Nodes().Get(ctx, a.c.nodeName, metav1.GetOptions{}); err == nil {
				if err := a.postStatus(ctx, n); err != nil {
					klog.Warningf("node status: %v", err)
				}
			}
			lastStatus = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(renewInterval):
		}
	}
}

// run watches pods: unbound ones are bound here (no scheduler runs), bound ones get a worker.
func (a *agent) run(ctx context.Context) {
	go a.heartbeat(ctx)
	// Events as a kubelet posts them, so `kubectl describe pod` tells what happened.
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.node.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.events = broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: a.c.nodeName})

	unbound := informers.NewSharedInformerFactoryWithOptions(a.binder, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.AndSelectors(fields.OneTermEqualSelector("spec.nodeName", ""),
			fields.OneTermNotEqualSelector("status.phase", string(v1.PodSucceeded)),
			fields.OneTermNotEqualSelector("status.phase", string(v1.PodFailed))).String()
	}))
	unbound.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.bind(ctx, obj) },
		UpdateFunc: func(_, obj any) { a.bind(ctx, obj) },
	})
	mine := informers.NewSharedInformerFactoryWithOptions(a.node, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.c.nodeName).String()
	}))
	mine.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.podChanged(ctx, obj.(*v1.Pod)) },
		UpdateFunc: func(_, obj any) { a.podChanged(ctx, obj.(*v1.Pod)) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*v1.Pod); ok {
				a.podGone(p.UID)
			}
		},
	})
	unbound.Start(ctx.Done())
	mine.Start(ctx.Done())
	<-ctx.Done()
	unbound.Shutdown()
	mine.Shutdown()
}

func (a *agent) bind(ctx context.Context, obj any) {
	p, ok := obj.(*v1.Pod)
	if !ok || p.Spec.NodeName != "" || p.DeletionTimestamp != nil {
		return
	}
	if p.Spec.SchedulerName != "" && p.Spec.SchedulerName != v1.DefaultSchedulerName {
		return
	}
	err := a.binder.CoreV1().Pods(p.Namespace).Bind(ctx, &v1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID},
		Target:     v1.ObjectReference{Kind: "Node", Name: a.c.nodeName},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) && ctx.Err() == nil {
		klog.Warningf("bind pod %s/%s: %v", p.Namespace, p.Name, err)
		return
	}
	klog.V(2).Infof("bound pod %s/%s", p.Namespace, p.Name)
}

func (a *agent) podChanged(ctx context.Context, p *v1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.pods[p.UID]
	if !ok {
		if a.done[p.UID] {
			return
		}
		if p.DeletionTimestamp != nil {
			// Nothing of it runs here (it never started, or finished before this agent did).
			go a.finalize(ctx, p)
			return
		}
		if p.Status.Phase == v1.PodSucceeded || p.Status.Phase == v1.PodFailed {
			return
		}
		w = newPodWorker(a, p)
		w.ctx = ctx
		a.pods[p.UID] = w
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			w.run(ctx)
			a.mu.Lock()
			delete(a.pods, p.UID)
			// Events still in flight for this pod must not start it again.
			a.done[p.UID] = true
			a.mu.Unlock()
		}()
		return
	}
	w.update(p)
}

// podGone handles a pod removed from the API without this agent finalizing it (force delete).
func (a *agent) podGone(uid types.UID) {
	a.mu.Lock()
	w := a.pods[uid]
	a.mu.Unlock()
	if w != nil {
		w.forget()
	}
	a.mu.Lock()
	delete(a.done, uid)
	a.mu.Unlock()
}

// finalize removes the pod object once nothing of it runs (grace period 0, this pod's UID only).
func (a *agent) finalize(ctx context.Context, p *v1.Pod) {
	err := a.node.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To(int64(0)),
		Preconditions:      &metav1.Preconditions{UID: &p.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.Warningf("finalize pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// stopAll kills every pod's processes and removes their namespaces (the agent is exiting).
func (a *agent) stopAll() {
	a.mu.Lock()
	for _, w := range a.pods {
		w.forget()
	}
	a.mu.Unlock()
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		klog.Warning("pods still stopping after 15s; exiting")
	}
}
