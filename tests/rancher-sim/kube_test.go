package main

// A real downstream control plane for the tests: etcd, kube-apiserver (audit log on, so the tests
// read what the apiserver itself recorded) and kube-controller-manager with only the token
// controller, from the toolchain cache the agent provisions (`scale-cluster-agent toolchain
// install`; CI runs it before these tests). Started once per test process, on first use.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const adminToken = "rancher-sim-test-admin-token"

type kubeCluster struct {
	dir       string
	address   string // 127.0.0.1:port of the apiserver
	caPEM     []byte
	auditPath string
	client    kubernetes.Interface
	procs     []*exec.Cmd
}

var (
	kubeOnce sync.Once
	kube     *kubeCluster
	kubeErr  error
)

// sharedKube returns the test process's control plane, starting it on first use.
func sharedKube(t *testing.T) *kubeCluster {
	t.Helper()
	kubeOnce.Do(func() { kube, kubeErr = startKube() })
	if kubeErr != nil {
		t.Fatalf("starting etcd and kube-apiserver: %v", kubeErr)
	}
	return kube
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kube != nil {
		kube.stop()
	}
	os.Exit(code)
}

// toolBinary is a pinned component from the agent's toolchain cache.
func toolBinary(name, version string) (string, error) {
	dir := os.Getenv("SCA_CACHE_DIR")
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(base, "scale-cluster-agent")
	}
	path := filepath.Join(dir, name, version, name)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s %s not in the toolchain cache (run `scale-cluster-agent toolchain install`): %w", name, version, err)
	}
	return path, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// writePKI writes the CA, the apiserver's serving certificate for 127.0.0.1 and the
// service-account key pair.
func writePKI(dir string) ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rancher-sim-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		name, typ string
		der       []byte
	}{
		{"ca.crt", "CERTIFICATE", caDER}, {"apiserver.crt", "CERTIFICATE", der}, {"apiserver.key", "EC PRIVATE KEY", keyDER},
		{"sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)}, {"sa.pub", "PUBLIC KEY", saPub},
	} {
		if err := writePEM(filepath.Join(dir, f.name), f.typ, f.der); err != nil {
			return nil, err
		}
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}

func startKube() (*kubeCluster, error) {
	etcd, err := toolBinary("etcd", "v3.6.16")
	if err != nil {
		return nil, err
	}
	apiserver, err := toolBinary("kube-apiserver", "v1.36.1")
	if err != nil {
		return nil, err
	}
	kcm, err := toolBinary("kube-controller-manager", "v1.36.1")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "rancher-sim-kube-")
	if err != nil {
		return nil, err
	}
	k := &kubeCluster{dir: dir, auditPath: filepath.Join(dir, "audit.log")}
	ok := false
	defer func() {
		if !ok {
			k.stop()
		}
	}()
	if k.caPEM, err = writePKI(dir); err != nil {
		return nil, err
	}
	files := map[string]string{
		"tokens.csv": adminToken + `,admin,admin,"system:masters"` + "\n",
		"audit.yaml": "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	if err := k.spawn("etcd", etcd, "--data-dir", filepath.Join(dir, "etcd"), "--unsafe-no-fsync",
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	k.address = fmt.Sprintf("127.0.0.1:%d", port)
	if err := k.spawn("kube-apiserver", apiserver, "--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port),
		"--tls-cert-file", filepath.Join(dir, "apiserver.crt"), "--tls-private-key-file", filepath.Join(dir, "apiserver.key"),
		"--token-auth-file", filepath.Join(dir, "tokens.csv"), "--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc", "--service-account-key-file", filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(dir, "sa.key"), "--service-cluster-ip-range", "10.0.0.0/24",
		"--audit-policy-file", filepath.Join(dir, "audit.yaml"), "--audit-log-path", k.auditPath); err != nil {
		return nil, err
	}
	config := &rest.Config{Host: "https://" + k.address, BearerToken: adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: k.caPEM}, Timeout: 10 * time.Second}
	if k.client, err = kubernetes.NewForConfig(config); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := k.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("kube-apiserver not ready within 60 s (logs in %s): %w", dir, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	kubeconfig := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://%s\n"+
		"    certificate-authority: %s\nusers:\n- name: u\n  user:\n    token: %s\ncontexts:\n- name: c\n  context:\n"+
		"    cluster: c\n    user: u\ncurrent-context: c\n", k.address, filepath.Join(dir, "ca.crt"), adminToken)
	if err := os.WriteFile(filepath.Join(dir, "kcm.kubeconfig"), []byte(kubeconfig), 0o600); err != nil {
		return nil, err
	}
	// Only the token controller: Rancher's impersonation setup waits for it to fill data.token.
	if err := k.spawn("kube-controller-manager", kcm, "--kubeconfig", filepath.Join(dir, "kcm.kubeconfig"),
		"--controllers", "serviceaccount-token", "--leader-elect=false", "--secure-port", "0",
		"--service-account-private-key-file", filepath.Join(dir, "sa.key"), "--root-ca-file", filepath.Join(dir, "ca.crt")); err != nil {
		return nil, err
	}
	ok = true
	return k, nil
}

func (k *kubeCluster) spawn(name, binary string, args ...string) error {
	logFile, err := os.Create(filepath.Join(k.dir, name+".log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	k.procs = append(k.procs, cmd)
	return nil
}

func (k *kubeCluster) stop() {
	for i := len(k.procs) - 1; i >= 0; i-- {
		_ = k.procs[i].Process.Kill()
		_ = k.procs[i].Wait()
	}
	_ = os.RemoveAll(k.dir)
}

// auditEvent is the part of an audit.k8s.io/v1 Event the tests read.
type auditEvent struct {
	AuditID    string `json:"auditID"`
	Stage      string `json:"stage"`
	RequestURI string `json:"requestURI"`
	Verb       string `json:"verb"`
	UserAgent  string `json:"userAgent"`
	ObjectRef  *struct {
		Resource  string `json:"resource"`
		Namespace string `json:"namespace"`
		APIGroup  string `json:"apiGroup"`
	} `json:"objectRef"`
}

// audit reads every event the apiserver has logged so far.
func (k *kubeCluster) audit(t *testing.T) []auditEvent {
	t.Helper()
	f, err := os.Open(k.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []auditEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e auditEvent
		// The last line may be half written; it is read again on the next call.
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// openWatches are the watches of clients whose User-Agent starts with agent that the apiserver
// started and has not finished, by "resource[/namespace][?fieldSelector]".
func (k *kubeCluster) openWatches(t *testing.T, agent string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, key := range k.openWatchIDs(t, agent) {
		out[key]++
	}
	return out
}

// openWatchIDs are those watches by audit ID: a watch that ended and was made again has a new one.
func (k *kubeCluster) openWatchIDs(t *testing.T, agent string) map[string]string {
	t.Helper()
	started := map[string]string{}
	for _, e := range k.audit(t) {
		if e.Verb != "watch" || !strings.HasPrefix(e.UserAgent, agent) || e.ObjectRef == nil {
			continue
		}
		switch e.Stage {
		case "ResponseStarted":
			key := e.ObjectRef.Resource
			if e.ObjectRef.Namespace != "" {
				key += "/" + e.ObjectRef.Namespace
			}
			if strings.Contains(e.RequestURI, "fieldSelector=") {
				key += "?fieldSelector"
			}
			started[e.AuditID] = key
		case "ResponseComplete":
			delete(started, e.AuditID)
		}
	}
	return started
}
