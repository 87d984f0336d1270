// Command controlplane is a multi-call binary for a local Kubernetes control plane: one link of
// the large shared dependency tree serves several programs. It dispatches on the name it is run
// as (symlinks) or on its first argument:
//
//	controlplane serve --dir DIR [--full] [--reuse-ports]
//	                                        etcd + kube-apiserver (+ kube-controller-manager child)
//	kube-apiserver ...                      upstream kube-apiserver, unchanged flags
//	kube-controller-manager ...             upstream kube-controller-manager, unchanged flags
//	kubectl ...                             upstream kubectl at the server's version
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as upstream binaries do

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name == "controlplane" {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
		// Upstream commands read os.Args (kubectl plugins, klog flags); present them as if run
		// under their own name.
		os.Args = append([]string{name}, args...)
	}
	switch name {
	case "serve":
		os.Exit(serve(args))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kubectl":
		runKubectl()
	default:
		usage()
		os.Exit(2)
	}
}

func runKubectl() {
	logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
	command := kubectl.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	os.Exit(0)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: controlplane serve --dir DIR [--full] [--reuse-ports] | kube-apiserver ... | kube-controller-manager ... | kubectl ...")
}
