package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func init() {
	// Fast retries keep the tests short.
	retryMin, retryMax = 20*time.Millisecond, 100*time.Millisecond
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settledGoroutines waits for the goroutine count to stop falling and returns it.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m <= n && i > 10 {
			return m
		}
		n = m
	}
	return n
}

func TestAClusterFailureIsRetriedAndStaysInThatCluster(t *testing.T) {
	var goodRuns atomic.Int32
	cs := newClusters(context.Background(), part{name: "p", run: func(ctx context.Context, name string) error {
		if name == "bad" {
			return errors.New("apiserver down")
		}
		goodRuns.Add(1)
		<-ctx.Done()
		return nil
	}})
	cs.add("bad")
	cs.add("good")
	eventually(t, 5*time.Second, "retries of the failing cluster", func() bool {
		return cs.states()["bad"]["p"].Restarts >= 3
	})
	st := cs.states()
	if st["bad"]["p"].LastError != "apiserver down" || st["bad"]["p"].Running {
		t.Fatalf("bad cluster state: %+v", st["bad"])
	}
	if !st["good"]["p"].Running || st["good"]["p"].Restarts != 0 || goodRuns.Load() != 1 {
		t.Fatalf("good cluster was disturbed: %+v, runs %d", st["good"], goodRuns.Load())
	}
	if cs.add("good") {
		t.Fatal("adding a running cluster again started it twice")
	}
	cs.removeAll()
	if len(cs.names()) != 0 {
		t.Fatalf("clusters left: %v", cs.names())
	}
}

func TestRemovalWaitsForTheClustersGoroutines(t *testing.T) {
	var stopped atomic.Bool
	cs := newClusters(context.Background(), part{name: "p", run: func(ctx context.Context, _ string) error {
		<-ctx.Done()
		time.Sleep(100 * time.Millisecond) // a controller's shutdown
		stopped.Store(true)
		return nil
	}})
	cs.add("a")
	found, err := cs.remove("a")
	if !found || err != nil {
		t.Fatalf("remove: %v %v", found, err)
	}
	if !stopped.Load() {
		t.Fatal("remove returned before the cluster's controllers stopped")
	}
	if found, _ := cs.remove("a"); found {
		t.Fatal("a removed cluster is still known")
	}
}

func TestControlAPI(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "one"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "one", "kubeconfig.yaml"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	cs := newClusters(context.Background(), part{name: "p", run: func(ctx context.Context, _ string) error {
		<-ctx.Done()
		return nil
	}})
	defer cs.removeAll()
	server := httptest.NewServer(newAPI(cs, dir))
	defer server.Close()
	do := func(method, path string) (int, string) {
		req, err := http.NewRequest(method, server.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, _ = fmt.Fprint(&b, readAll(resp))
		return resp.StatusCode, b.String()
	}
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"PUT", "/clusters/Bad.Name", 400},
		{"PUT", "/clusters/..", 404}, // cleaned by the mux to a path it does not serve
		{"PUT", "/clusters/missing", 404},
		{"PUT", "/clusters/one", 201},
		{"PUT", "/clusters/one", 204},
		{"GET", "/ping", 200},
		{"GET", "/debug/pprof/heap", 200},
		{"GET", "/debug/pprof/no-such-profile", 404},
	} {
		if status, body := do(tc.method, tc.path); status != tc.status {
			t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, status, body, tc.status)
		}
	}
	// A real profile, not just a route: pprof's protobuf, gzipped.
	if _, profile := do("GET", "/debug/pprof/heap"); !strings.HasPrefix(profile, "\x1f\x8b") {
		t.Fatalf("GET /debug/pprof/heap: not a gzipped profile: %.40q", profile)
	}
	_, body := do("GET", "/clusters")
	var listed map[string]map[string]partState
	if err := json.Unmarshal([]byte(body), &listed); err != nil || !listed["one"]["p"].Running {
		t.Fatalf("GET /clusters: %s (%v)", body, err)
	}
	if status, _ := do("DELETE", "/clusters/one"); status != 204 {
		t.Fatalf("DELETE: %d", status)
	}
	if len(cs.names()) != 0 {
		t.Fatalf("still running: %v", cs.names())
	}
	_, stats := do("GET", "/debug/stats")
	if !strings.Contains(stats, `"clusters":0`) {
		t.Fatalf("stats: %s", stats)
	}
}

func readAll(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// TestUpstreamWiringPerClusterAndNoGoroutineLeak runs the real kube-controller-manager and kwok
// wiring for two clusters in one process against an apiserver that is not there: each cluster
// fails on the connection alone (not on process-global state registered twice) and is retried,
// and add/remove cycles leave no goroutine behind.
func TestUpstreamWiringPerClusterAndNoGoroutineLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kcm's and kwok's clients for real; skipped with -short")
	}
	old := stopTimeout
	stopTimeout = 60 * time.Second
	defer func() { stopTimeout = old }()
	dir := t.TempDir()
	for _, name := range []string{"a", "b"} {
		writeClusterFiles(t, filepath.Join(dir, name), closedPort(t))
	}
	parts := clusterParts(dir, []string{"serviceaccount-token-controller", "serviceaccount-controller",
		"namespace-controller", "garbage-collector-controller", "deployment-controller", "replicaset-controller",
		"root-ca-certificate-publisher-controller", "clusterrole-aggregation-controller"})
	cs := newClusters(context.Background(), parts...)

	cycle := func() {
		cs.add("a")
		cs.add("b")
		eventually(t, 60*time.Second, "both parts of both clusters to fail and be retried", func() bool {
			st := cs.states()
			for _, name := range []string{"a", "b"} {
				for _, p := range []string{"kube-controller-manager", "kwok-controller"} {
					if st[name][p].Restarts < 1 {
						return false
					}
				}
			}
			return true
		})
		for name, parts := range cs.states() {
			for p, st := range parts {
				if !strings.Contains(st.LastError, "connect") && !strings.Contains(st.LastError, "refused") &&
					!strings.Contains(st.LastError, "healthy") && !strings.Contains(st.LastError, "timed out") {
					t.Fatalf("cluster %s %s failed for another reason than the missing apiserver: %s", name, p, st.LastError)
				}
			}
		}
		cs.removeAll()
	}
	// The first cycle initialises what upstream sets up once per process (metrics registration,
	// feature gates, the TLS transport cache, klog's flush daemon); later cycles must add nothing.
	cycle()
	baseline := settledGoroutines()
	for i := 0; i < 2; i++ {
		cycle()
	}
	// What a removal must stop is every controller, informer and retry loop of the cluster: tens
	// of goroutines per cluster. A few per add can stay behind in upstream code the host cannot
	// reach (client-go's TLS transport cache starts a cert-rotation loop per uncacheable
	// transport and never stops it; kwok's event broadcaster is never shut down), so the bound
	// allows those and still fails on anything the host itself leaks.
	const upstreamPerCycle = 4
	if after := settledGoroutines(); after > baseline+2*upstreamPerCycle {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Fatalf("goroutines leaked: %d after two more add/remove cycles, %d before\n%s", after, baseline, buf[:n])
	}
}

func closedPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// writeClusterFiles writes what kwokctl leaves in a cluster's directory, as far as the host
// reads it: an admin kubeconfig, the CA, the service-account key and kwok.yaml with a stage.
func writeClusterFiles(t *testing.T, dir string, port int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	write := func(name string, data []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("pki/ca.crt", certPEM)
	write("pki/admin.crt", certPEM)
	write("pki/admin.key", keyPEM)
	write("kubeconfig.yaml", []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://127.0.0.1:%d
    certificate-authority: %s
users:
- name: u
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
`, port, filepath.Join(dir, "pki/ca.crt"), filepath.Join(dir, "pki/admin.crt"), filepath.Join(dir, "pki/admin.key"))))
	write("kwok.yaml", []byte(`apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  nodeLeaseDurationSeconds: 40
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: .status.conditions.[] | select( .type == "Ready" ) | .status
      operator: NotIn
      values: ["True"]
  next:
    statusTemplate: "{}"
`))
}
