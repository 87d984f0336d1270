package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// writeVolumes materialises the pod's volumes under DIR/volumes/NAME: emptyDir as an empty
// directory, ConfigMap/Secret/downward API/projected as files. Containers bind-mount them.
func (w *podWorker) writeVolumes(ctx context.Context) error {
	p := w.current()
	for _, v := range p.Spec.Volumes {
		dir := filepath.Join(w.dir, "volumes", v.Name)
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return err
		}
		var files map[string]file
		var err error
		switch {
		case v.EmptyDir != nil, v.HostPath != nil:
			continue
		case v.ConfigMap != nil:
			files, err = w.configMapFiles(ctx, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
		case v.Secret != nil:
			files, err = w.secretFiles(ctx, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
		case v.DownwardAPI != nil:
			files, err = w.downwardFiles(v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
		case v.Projected != nil:
			files, err = w.projectedFiles(ctx, v.Projected)
		default:
			err = fmt.Errorf("volume %s: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes run here", v.Name)
		}
		if err != nil {
			return err
		}
		for name, f := range files {
			path := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(path, f.data, f.mode); err != nil {
				return err
			}
		}
	}
	return nil
}

type file struct {
	data []byte
	mode os.FileMode
}

func mode(item, def *int32) os.FileMode {
	switch {
	case item != nil:
		return os.FileMode(*item)
	case def != nil:
		return os.FileMode(*def)
	}
	return 0o644
}

func pick(data map[string][]byte, items []v1.KeyToPath, def *int32) (map[string]file, error) {
	out := map[string]file{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = file{v, mode(nil, def)}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("no key %s", it.Key)
		}
		out[it.Path] = file{v, mode(it.Mode, def)}
	}
	return out, nil
}

func (w *podWorker) configMapFiles(ctx context.Context, name string, items []v1.KeyToPath, optional *bool, def *int32) (map[string]file, error) {
	cm, err := w.a.node.CoreV1().ConfigMaps(w.current().Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("configmap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return pick(data, items, def)
}

func (w *podWorker) secretFiles(ctx context.Context, name string, items []v1.KeyToPath, optional *bool, def *int32) (map[string]file, error) {
	s, err := w.a.node.CoreV1().Secrets(w.current().Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil, nil
		}
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	return pick(s.Data, items, def)
}

func (w *podWorker) downwardFiles(items []v1.DownwardAPIVolumeFile, def *int32) (map[string]file, error) {
	out := map[string]file{}
	for _, it := range items {
		var v string
		var err error
		if it.FieldRef != nil {
			v, err = w.field(it.FieldRef.FieldPath)
		} else if it.ResourceFieldRef != nil {
			v, err = w.resourceField(&w.current().Spec.Containers[0], it.ResourceFieldRef)
		}
		if err != nil {
			return nil, err
		}
		out[it.Path] = file{[]byte(v), mode(it.Mode, def)}
	}
	return out, nil
}

// projectedFiles handles the service account volume every pod gets by default (token, CA,
// namespace) and any other projection of ConfigMaps, Secrets and the downward API.
func (w *podWorker) projectedFiles(ctx context.Context, pv *v1.ProjectedVolumeSource) (map[string]file, error) {
	out := map[string]file{}
	p := w.current()
	for _, s := range pv.Sources {
		var files map[string]file
		var err error
		switch {
		case s.ConfigMap != nil:
			files, err = w.configMapFiles(ctx, s.ConfigMap.Name, s.ConfigMap.Items, s.ConfigMap.Optional, pv.DefaultMode)
		case s.Secret != nil:
			files, err = w.secretFiles(ctx, s.Secret.Name, s.Secret.Items, s.Secret.Optional, pv.DefaultMode)
		case s.DownwardAPI != nil:
			files, err = w.downwardFiles(s.DownwardAPI.Items, pv.DefaultMode)
		case s.ServiceAccountToken != nil:
			t := s.ServiceAccountToken
			var aud []string
			if t.Audience != "" {
				aud = []string{t.Audience}
			}
			var tr *authv1.TokenRequest
			tr, err = w.a.node.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, p.Spec.ServiceAccountName, &authv1.TokenRequest{
				Spec: authv1.TokenRequestSpec{Audiences: aud, ExpirationSeconds: ptr.To(max(ptr.Deref(t.ExpirationSeconds, 3600), 600)),
					BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}},
			}, metav1.CreateOptions{})
			if err == nil {
				files = map[string]file{t.Path: {[]byte(tr.Status.Token), mode(nil, pv.DefaultMode)}}
			}
		}
		if err != nil {
			return nil, err
		}
		for k, v := range files {
			out[k] = v
		}
	}
	return out, nil
}
