package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const hostPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// env is the container's environment: base variables, envFrom, then env (later wins), with the
// app image's virtualenv active.
func (w *podWorker) env(ctx context.Context, c *container, app *imageEntry) ([]string, error) {
	p := w.current()
	vars := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	set("PATH", hostPath)
	set("HOSTNAME", p.Name)
	set("HOME", "/root")
	if app != nil {
		venv := app.Venv
		if venv == "" {
			venv = w.a.c.venv
		}
		if venv != "" {
			set("VIRTUAL_ENV", venv)
			set("PATH", filepath.Join(venv, "bin")+":"+hostPath)
		}
	}
	for _, from := range c.spec.EnvFrom {
		data, err := w.sourceData(ctx, p.Namespace, from.ConfigMapRef, from.SecretRef)
		if err != nil {
			return nil, err
		}
		for k, v := range data {
			set(from.Prefix+k, v)
		}
	}
	for _, e := range c.spec.Env {
		if e.ValueFrom == nil {
			cur := make([]string, 0, len(order))
			for _, k := range order {
				cur = append(cur, k+"="+vars[k])
			}
			set(e.Name, expand(e.Value, cur))
			continue
		}
		v, err := w.valueFrom(ctx, c, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		set(e.Name, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vars[k])
	}
	return out, nil
}

func (w *podWorker) sourceData(ctx context.Context, ns string, cm *v1.ConfigMapEnvSource, sec *v1.SecretEnvSource) (map[string]string, error) {
	out := map[string]string{}
	switch {
	case cm != nil:
		obj, err := w.a.node.CoreV1().ConfigMaps(ns).Get(ctx, cm.Name, metav1.GetOptions{})
		if err != nil {
			if cm.Optional != nil && *cm.Optional {
				return out, nil
			}
			return nil, fmt.Errorf("configmap %s: %w", cm.Name, err)
		}
		for k, v := range obj.Data {
			out[k] = v
		}
	case sec != nil:
		obj, err := w.a.node.CoreV1().Secrets(ns).Get(ctx, sec.Name, metav1.GetOptions{})
		if err != nil {
			if sec.Optional != nil && *sec.Optional {
				return out, nil
			}
			return nil, fmt.Errorf("secret %s: %w", sec.Name, err)
		}
		for k, v := range obj.Data {
			out[k] = string(v)
		}
	}
	return out, nil
}

func (w *podWorker) valueFrom(ctx context.Context, c *container, src *v1.EnvVarSource) (string, error) {
	p := w.current()
	switch {
	case src.FieldRef != nil:
		return w.field(src.FieldRef.FieldPath)
	case src.ResourceFieldRef != nil:
		return w.resourceField(c.spec, src.ResourceFieldRef)
	case src.ConfigMapKeyRef != nil:
		r := src.ConfigMapKeyRef
		data, err := w.sourceData(ctx, p.Namespace, &v1.ConfigMapEnvSource{LocalObjectReference: r.LocalObjectReference, Optional: r.Optional}, nil)
		if err != nil {
			return "", err
		}
		v, ok := data[r.Key]
		if !ok && (r.Optional == nil || !*r.Optional) {
			return "", fmt.Errorf("configmap %s has no key %s", r.Name, r.Key)
		}
		return v, nil
	case src.SecretKeyRef != nil:
		r := src.SecretKeyRef
		data, err := w.sourceData(ctx, p.Namespace, nil, &v1.SecretEnvSource{LocalObjectReference: r.LocalObjectReference, Optional: r.Optional})
		if err != nil {
			return "", err
		}
		v, ok := data[r.Key]
		if !ok && (r.Optional == nil || !*r.Optional) {
			return "", fmt.Errorf("secret %s has no key %s", r.Name, r.Key)
		}
		return v, nil
	}
	return "", fmt.Errorf("unsupported valueFrom")
}

// field is the downward API's fieldRef.
func (w *podWorker) field(path string) (string, error) {
	p := w.current()
	w.mu.Lock()
	ip := w.ip
	w.mu.Unlock()
	switch path {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "spec.nodeName":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP", "status.podIPs":
		if ip == nil {
			return "", nil
		}
		return ip.String(), nil
	case "status.hostIP", "status.hostIPs":
		return w.a.net.gateway.String(), nil
	}
	for prefix, m := range map[string]map[string]string{"metadata.labels": p.Labels, "metadata.annotations": p.Annotations} {
		if path == prefix {
			var lines []string
			for k, v := range m {
				lines = append(lines, fmt.Sprintf("%s=%q", k, v))
			}
			return strings.Join(lines, "\n"), nil
		}
		if rest, ok := strings.CutPrefix(path, prefix+"['"); ok {
			return m[strings.TrimSuffix(rest, "']")], nil
		}
	}
	return "", fmt.Errorf("unsupported fieldRef %s", path)
}

// resourceField is the downward API's resourceFieldRef: the container's limit (else the node's
// capacity) or request, in units of the divisor.
func (w *podWorker) resourceField(ctr *v1.Container, r *v1.ResourceFieldSelector) (string, error) {
	if r.ContainerName != "" {
		for i := range w.current().Spec.Containers {
			if w.current().Spec.Containers[i].Name == r.ContainerName {
				ctr = &w.current().Spec.Containers[i]
			}
		}
	}
	kind, name, ok := strings.Cut(r.Resource, ".")
	if !ok {
		return "", fmt.Errorf("unsupported resource %s", r.Resource)
	}
	list := ctr.Resources.Limits
	if kind == "requests" {
		list = ctr.Resources.Requests
	}
	q, ok := list[v1.ResourceName(name)]
	if !ok {
		q = w.a.nodeStatus().Capacity[v1.ResourceName(name)]
	}
	div := r.Divisor
	if div.IsZero() {
		div = resource.MustParse("1")
	}
	v := (q.MilliValue() + div.MilliValue() - 1) / div.MilliValue()
	return fmt.Sprint(v), nil
}
