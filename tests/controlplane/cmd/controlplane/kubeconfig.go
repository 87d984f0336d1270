package main

import (
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// credential is how one kubeconfig authenticates: a bearer token or a client certificate.
type credential struct {
	Token    string
	CertFile string
	KeyFile  string
}

// writeKubeconfig writes a kubeconfig whose only context points at server, trusting caFile.
// Certificates and keys are embedded so the file stays valid when copied elsewhere.
func writeKubeconfig(path, server, caFile, user string, cred credential) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	auth := &clientcmdapi.AuthInfo{Token: cred.Token}
	if cred.CertFile != "" {
		if auth.ClientCertificateData, err = os.ReadFile(cred.CertFile); err != nil {
			return err
		}
		if auth.ClientKeyData, err = os.ReadFile(cred.KeyFile); err != nil {
			return err
		}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos[user] = auth
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "local"
	// Write then rename so a reader never sees half a file.
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
