package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths of every key, certificate and credential file the control plane uses.
type pki struct {
	Dir         string
	CACert      string
	CAKey       string
	ServingCert string
	ServingKey  string
	SAKey       string // private key: signs service account tokens (controller-manager, apiserver)
	SAPub       string // public key: verifies them
	TokenFile   string
	AdminToken  string
}

// clientIdentity is a user the API server knows by a client certificate signed by the CA.
type clientIdentity struct {
	Name   string // file base name: pki/NAME.crt, pki/NAME.key
	User   string
	Groups []string
}

// clientIdentities are the components' users, each with the rights the default RBAC and the Node
// authorizer give it: the controller-manager, a scheduler (may bind pods to nodes) and one node
// (may update its Node and the pods bound to it) for a node agent.
var clientIdentities = []clientIdentity{
	{Name: "controller-manager", User: "system:kube-controller-manager"},
	{Name: "scheduler", User: "system:kube-scheduler"},
	{Name: "node", User: "system:node:" + nodeName, Groups: []string{"system:nodes"}},
}

// nodeName is the Node the `node` identity may act for.
const nodeName = "kubewsgi-node"

func (p *pki) clientCert(name string) (cert, key string) {
	return filepath.Join(p.Dir, name+".crt"), filepath.Join(p.Dir, name+".key")
}

const certValidity = 10 * 365 * 24 * time.Hour

// ensurePKI creates the CA, the serving certificate, the service account key pair, the admin
// token and the controller-manager client certificate under dir, reusing files that already exist
// so that a restart over the same directory keeps its credentials.
func ensurePKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{
		Dir:         dir,
		CACert:      filepath.Join(dir, "ca.crt"),
		CAKey:       filepath.Join(dir, "ca.key"),
		ServingCert: filepath.Join(dir, "apiserver.crt"),
		ServingKey:  filepath.Join(dir, "apiserver.key"),
		SAKey:       filepath.Join(dir, "sa.key"),
		SAPub:       filepath.Join(dir, "sa.pub"),
		TokenFile:   filepath.Join(dir, "tokens.csv"),
	}
	if _, lastKey := p.clientCert(clientIdentities[len(clientIdentities)-1].Name); exists(p.TokenFile) && exists(lastKey) {
		token, err := readAdminToken(p.TokenFile)
		if err != nil {
			return nil, err
		}
		p.AdminToken = token
		return p, nil
	}

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kubewsgi-local-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writeCert(p.CACert, caDER); err != nil {
		return nil, err
	}
	if err := writeKey(p.CAKey, caKey); err != nil {
		return nil, err
	}

	// The serving certificate names every address a client may use: loopback for tests and
	// the in-cluster service names and IP for pods that talk to the API.
	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(serviceIP)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if err := issue(serving, caCert, caKey, p.ServingCert, p.ServingKey); err != nil {
		return nil, err
	}
	for _, id := range clientIdentities {
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: id.User, Organization: id.Groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		certPath, keyPath := p.clientCert(id.Name)
		if err := issue(tmpl, caCert, caKey, certPath, keyPath); err != nil {
			return nil, err
		}
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writeKey(p.SAKey, saKey); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.SAPub, "PUBLIC KEY", pubDER, 0o644); err != nil {
		return nil, err
	}

	tok := make([]byte, 24)
	if _, err := rand.Read(tok); err != nil {
		return nil, err
	}
	p.AdminToken = base64.RawURLEncoding.EncodeToString(tok)
	// Static token file format: token,user,uid,"group1,group2".
	line := fmt.Sprintf("%s,admin,admin-uid,\"system:masters\"\n", p.AdminToken)
	if err := os.WriteFile(p.TokenFile, []byte(line), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// issue signs tmpl with the CA and writes the certificate and a fresh P-256 key.
func issue(tmpl, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeCert(certPath, der); err != nil {
		return err
	}
	return writeKey(keyPath, key)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

func writeCert(path string, der []byte) error {
	return writePEM(path, "CERTIFICATE", der, 0o644)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), mode)
}

func readAdminToken(tokenFile string) (string, error) {
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		return "", err
	}
	for i, c := range data {
		if c == ',' {
			return string(data[:i]), nil
		}
	}
	return "", fmt.Errorf("%s: no token found", tokenFile)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
