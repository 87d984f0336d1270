package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// imageEntry is what an image reference maps to: a host directory holding the app, optionally the
// virtualenv its packages live in and the image's WORKDIR (where the directory appears in its
// containers). DIR/images.yaml maps references to a directory, or to {dir, venv, workingDir}.
type imageEntry struct {
	Dir        string
	Venv       string
	WorkingDir string
}

// isKubewsgiImage: the kubewsgi images run the built kubewsgi binary.
func isKubewsgiImage(ref string) bool {
	repo := imageRepo(ref)
	return strings.HasSuffix(repo, "kubewsgi/kubewsgi") || strings.HasSuffix(repo, "kubewsgi-python")
}

// imageRepo strips the tag or digest from an image reference.
func imageRepo(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref
}

// lookupImage reads the images file afresh (tests and people add apps while the agent runs).
func (a *agent) lookupImage(ref string) (*imageEntry, error) {
	b, err := os.ReadFile(a.c.imagesFile)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	raw := map[string]any{}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", a.c.imagesFile, err)
	}
	v, ok := raw[ref]
	if !ok {
		v, ok = raw[imageRepo(ref)]
	}
	if !ok {
		return nil, nil
	}
	var e imageEntry
	switch x := v.(type) {
	case string:
		e.Dir = x
	case map[string]any:
		e.Dir, _ = x["dir"].(string)
		e.Venv, _ = x["venv"].(string)
		e.WorkingDir, _ = x["workingDir"].(string)
	}
	if !filepath.IsAbs(e.Dir) {
		return nil, fmt.Errorf("%s: image %s must map to an absolute directory, not %q", a.c.imagesFile, ref, e.Dir)
	}
	if st, err := os.Stat(e.Dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s: image %s maps to %s, which is not a directory", a.c.imagesFile, ref, e.Dir)
	}
	return &e, nil
}

// resolveProgram maps `kubewsgi` to the built binary; other programs run as found on the host.
func (w *podWorker) resolveProgram(prog string) string {
	if prog == "kubewsgi" || filepath.Base(prog) == "kubewsgi" {
		return w.a.c.kubewsgiBinary
	}
	return prog
}

// sandboxSpec turns a container into a host process: program, environment, mounts, directory.
func (w *podWorker) sandboxSpec(ctx context.Context, c *container) (*sandboxSpec, error) {
	ref := c.spec.Image
	var app *imageEntry
	if !isKubewsgiImage(ref) {
		var err error
		if app, err = w.a.lookupImage(ref); err != nil {
			return nil, &startError{"ErrImageNeverPull", err}
		}
		if app == nil {
			return nil, &startError{"ErrImageNeverPull", fmt.Errorf(
				"image %s is not available on this node: map it to an app directory in %s", ref, w.a.c.imagesFile)}
		}
	}
	env, err := w.env(ctx, c, app)
	if err != nil {
		return nil, &startError{"CreateContainerConfigError", err}
	}
	argv := append(append([]string{}, c.spec.Command...), c.spec.Args...)
	if len(c.spec.Command) == 0 {
		if app != nil {
			return nil, &startError{"CreateContainerError", fmt.Errorf("image %s has no entrypoint here: the container needs a command", ref)}
		}
		argv = append([]string{"kubewsgi"}, c.spec.Args...)
	}
	for i := range argv {
		argv[i] = expand(argv[i], env)
	}
	if len(argv) == 0 {
		return nil, &startError{"CreateContainerError", fmt.Errorf("no command")}
	}
	argv[0] = w.resolveProgram(argv[0])
	if argv[0] == "" {
		return nil, &startError{"CreateContainerError", fmt.Errorf("no kubewsgi binary configured (--kubewsgi-binary or KUBEWSGI_BINARY)")}
	}
	_, term := c.files()
	s := &sandboxSpec{Argv: argv, Env: env, Dir: c.spec.WorkingDir, TerminationLog: term, TerminationAt: c.spec.TerminationMessagePath}
	switch {
	case app == nil && s.Dir == "":
		s.Dir = "/"
	case app != nil:
		if s.Dir == "" {
			s.Dir = app.WorkingDir
		}
		if s.Dir == "" {
			s.Dir = app.Dir
		} else if s.Dir != app.Dir {
			s.Mounts = append(s.Mounts, mount{Source: app.Dir, Target: s.Dir})
		}
	}
	mounts, err := w.mounts(c)
	if err != nil {
		return nil, &startError{"CreateContainerConfigError", err}
	}
	s.Mounts = append(s.Mounts, mounts...)
	return s, nil
}

// expand replaces $(NAME) with earlier variables, as the kubelet does; $$ escapes.
func expand(s string, env []string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	vars := map[string]string{}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		vars[k] = v
	}
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) {
			if s[i+1] == '$' {
				out.WriteByte('$')
				i++
				continue
			}
			if s[i+1] == '(' {
				if j := strings.IndexByte(s[i:], ')'); j > 0 {
					if v, ok := vars[s[i+2:i+j]]; ok {
						out.WriteString(v)
						i += j
						continue
					}
				}
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

// mounts are the container's volumeMounts, each from the pod's materialised volume directory.
func (w *podWorker) mounts(c *container) ([]mount, error) {
	p := w.current()
	var out []mount
	for _, vm := range c.spec.VolumeMounts {
		var src string
		for _, v := range p.Spec.Volumes {
			if v.Name != vm.Name {
				continue
			}
			if v.HostPath != nil {
				src = v.HostPath.Path
			} else {
				src = filepath.Join(w.dir, "volumes", v.Name)
			}
		}
		if src == "" {
			return nil, fmt.Errorf("volume %q of mount %s is not in the pod", vm.Name, vm.MountPath)
		}
		if vm.SubPath != "" {
			src = filepath.Join(src, vm.SubPath)
			if err := os.MkdirAll(src, 0o755); err != nil {
				return nil, err
			}
		}
		out = append(out, mount{Source: src, Target: vm.MountPath, ReadOnly: vm.ReadOnly})
	}
	return out, nil
}
