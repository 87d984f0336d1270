package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// sandboxSpec is what the `sandbox` helper needs to start one container process. The helper runs
// under `ip netns exec`, which already gave it the pod's network namespace and a private mount
// namespace (mounts made there never show on the host).
type sandboxSpec struct {
	Argv           []string `json:"argv"`
	Env            []string `json:"env"`
	Dir            string   `json:"dir"`
	Mounts         []mount  `json:"mounts"`
	TerminationLog string   `json:"terminationLog"`
	TerminationAt  string   `json:"terminationAt"`
}

type mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// devNodes are the host devices a container's private /dev gets (as container runtimes give).
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// sandboxMain sets up the container's /dev (with its own termination log), volume mounts and
// working directory, then execs the container's program in place.
func sandboxMain(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "sandbox: "+format+"\n", a...)
		return 127
	}
	if len(args) != 1 {
		return fail("usage: sandbox SPEC.json")
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		return fail("%v", err)
	}
	var s sandboxSpec
	if err := json.Unmarshal(b, &s); err != nil {
		return fail("%s: %v", args[0], err)
	}
	if err := privateDev(s); err != nil {
		return fail("/dev: %v", err)
	}
	for _, m := range s.Mounts {
		if err := bind(m.Source, m.Target, m.ReadOnly); err != nil {
			return fail("mount %s at %s: %v", m.Source, m.Target, err)
		}
	}
	if s.Dir != "" {
		if err := os.MkdirAll(s.Dir, 0o755); err != nil {
			return fail("working directory: %v", err)
		}
		if err := os.Chdir(s.Dir); err != nil {
			return fail("working directory: %v", err)
		}
	}
	prog := s.Argv[0]
	if !strings.Contains(prog, "/") {
		path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		for _, e := range s.Env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				path = v
			}
		}
		os.Setenv("PATH", path)
		if p, err := exec.LookPath(prog); err == nil {
			prog = p
		} else {
			return fail("%s: not found on PATH %s", prog, path)
		}
	}
	err = syscall.Exec(prog, s.Argv, s.Env)
	return fail("exec %s: %v", prog, err)
}

// privateDev replaces /dev with a tmpfs holding the usual device nodes bound from the host, and
// the container's termination-log file.
func privateDev(s sandboxSpec) error {
	host := filepath.Join(filepath.Dir(s.TerminationLog), ".hostdev")
	if err := os.MkdirAll(host, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("/dev", host, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", "/dev", "tmpfs", syscall.MS_NOSUID, "mode=755,size=65536k"); err != nil {
		return err
	}
	for _, n := range devNodes {
		if err := bind(filepath.Join(host, n), "/dev/"+n, false); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		if _, err := os.Stat(filepath.Join(host, d)); err == nil {
			if err := bind(filepath.Join(host, d), "/dev/"+d, false); err != nil {
				return err
			}
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"} {
		_ = os.Symlink(target, "/dev/"+name)
	}
	if err := syscall.Unmount(host, syscall.MNT_DETACH); err != nil {
		return err
	}
	at := s.TerminationAt
	if at == "" {
		at = "/dev/termination-log"
	}
	return bind(s.TerminationLog, at, false)
}

// bind mounts source at target, creating the target (a directory, or a file for a file source).
func bind(source, target string, readOnly bool) error {
	st, err := os.Stat(source)
	if err != nil {
		return err
	}
	if st.IsDir() {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if _, err := os.Stat(target); os.IsNotExist(err) {
			if f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	if err := syscall.Mount(source, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	if readOnly {
		return syscall.Mount("", target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, "")
	}
	return nil
}
