package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rancher/remotedialer"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// createCluster creates an imported cluster through the v3 API; returns its id and registration
// token.
func createCluster(t *testing.T, s *sim, url string, client *http.Client, name string) (string, string) {
	t.Helper()
	status, created := call(t, client, "POST", url+"/v3/clusters", `{"type":"cluster","name":"`+name+`","importedConfig":{}}`)
	if status != 201 {
		t.Fatalf("create: %d %v", status, created)
	}
	id := created["id"].(string)
	s.mu.Lock()
	defer s.mu.Unlock()
	return id, s.st.Tokens[id+":default-token"].Token
}

// agentSide holds the agent's end of the two tunnels, as the real agent does: main (streams
// dialed to the addresses Rancher asks for) and steve (streams to 127.0.0.1:6080 served by steve).
type agentSide struct {
	t        *testing.T
	wsURL    string
	dialer   *websocket.Dialer
	token    string
	params   string
	steve    http.Handler
	stopMain context.CancelFunc
	mainDone chan struct{}

	mu     sync.Mutex
	dialed []string
}

func newAgentSide(t *testing.T, srvURL string, client *http.Client, token, address, saToken string, caPEM []byte, steve http.Handler) *agentSide {
	raw, err := json.Marshal(map[string]any{"cluster": map[string]string{
		"address": address, "token": saToken, "caCert": base64.StdEncoding.EncodeToString(caPEM),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &agentSide{
		t:      t,
		wsURL:  strings.Replace(srvURL, "https://", "wss://", 1) + "/v3/connect",
		dialer: &websocket.Dialer{TLSClientConfig: client.Transport.(*http.Transport).TLSClientConfig},
		token:  token, params: base64.StdEncoding.EncodeToString(raw), steve: steve,
	}
}

// connectMain keeps the main tunnel up (reconnecting after Rancher's first-connect conflict)
// until disconnectMain.
func (a *agentSide) connectMain() {
	ctx, cancel := context.WithCancel(context.Background())
	a.stopMain, a.mainDone = cancel, make(chan struct{})
	a.t.Cleanup(cancel)
	headers := http.Header{headerTunnelToken: {a.token}, headerTunnelParams: {a.params}}
	go func() {
		defer close(a.mainDone)
		for ctx.Err() == nil {
			_ = remotedialer.ClientConnect(ctx, a.wsURL, headers, a.dialer, func(string, string) bool { return true }, nil)
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

func (a *agentSide) disconnectMain() {
	a.stopMain()
	<-a.mainDone
}

// connectSteve holds the steve tunnel. Like Steve's aggregation client on the real agent it
// accepts every stream and serves it with the test's steve handler; the addresses Rancher dialed
// are recorded in dialed.
func (a *agentSide) connectSteve() {
	srv := httptest.NewServer(a.steve)
	a.t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	a.t.Cleanup(cancel)
	allow := func(string, string) bool { return true }
	local := func(ctx context.Context, network, address string) (net.Conn, error) {
		a.mu.Lock()
		a.dialed = append(a.dialed, address)
		a.mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}
	headers := http.Header{"Authorization": {"Bearer " + steveTokenPrefix + a.token}}
	go func() {
		for ctx.Err() == nil {
			_ = remotedialer.ConnectToProxyWithDialer(ctx, a.wsURL, headers, allow, a.dialer, local, nil)
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
}

func pingOnly() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" {
			_, _ = w.Write([]byte("pong"))
			return
		}
		http.NotFound(w, r)
	})
}

func waitLong(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *sim) runtime(id string) runtimeStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return *s.stats(id)
}

func (s *sim) state(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.st.Clusters[id]
	if rec == nil {
		return "gone"
	}
	state, _, _ := clusterState(rec, s.stats(id))
	return state
}

// rancherWatches is the watch set as the apiserver's audit log shows it.
var rancherWatches = map[string]int{
	"namespaces": 1, "clusterroles": 1, "clusterrolebindings": 1, "roles": 1, "rolebindings": 1,
	"resourcequotas": 1, "limitranges": 1, "nodes": 1, "apiservices": 1,
	"secrets/" + impersonationNamespace: 1, "serviceaccounts/" + impersonationNamespace: 1,
	"secrets/" + agentNamespace + "?fieldSelector": 1,
}

// TestRancherWatchSetAndKubectlApply runs a cluster to active against a real apiserver and checks
// in the apiserver's own audit log that the simulator holds Rancher's watch set (once, also after
// a reconnect, and none once the cluster is deleted) and applied the agent manifest the way
// kubectl apply does (OpenAPI v3 fetched, strict field validation, client-side apply).
func TestRancherWatchSetAndKubectlApply(t *testing.T) {
	k := sharedKube(t)
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "fidelity-node"}}
	if _, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s, srv, client := startSim(t, "v2.14.0")
	id, token := createCluster(t, s, srv.URL, client, "fidelity")
	agent := newAgentSide(t, srv.URL, client, token, k.address, adminToken, k.caPEM, pingOnly())
	agent.connectMain()
	agent.connectSteve()
	waitLong(t, "cluster active", 60*time.Second, func() bool { return s.state(id) == "active" })

	rt := s.runtime(id)
	if rt.WatchSet != watchSetRancher || rt.Watches != len(rancherWatchSet) || rt.WatchesSynced != len(rancherWatchSet) {
		t.Errorf("stats: watch set %q, %d watches, %d synced; want %d", rt.WatchSet, rt.Watches, rt.WatchesSynced, len(rancherWatchSet))
	}
	waitLong(t, "the watch set open in the apiserver", 10*time.Second, func() bool {
		return reflect.DeepEqual(k.openWatches(t, "rancher-sim"), rancherWatches)
	})

	// The global admin's binding, which lets the agent's Steve serve the admin.
	crb, err := k.client.RbacV1().ClusterRoleBindings().Get(ctx, "globaladmin-"+adminUser, metav1.GetOptions{})
	if err != nil || crb.RoleRef.Name != "cluster-admin" || len(crb.Subjects) != 1 ||
		crb.Subjects[0].Kind != "User" || crb.Subjects[0].Name != adminUser {
		t.Errorf("global admin binding %+v %v", crb, err)
	}

	// kubectl apply: what the apiserver saw, and what it stored.
	var openapi, strictCreates int
	var kubectlRequests []string
	for _, e := range k.audit(t) {
		if !strings.HasPrefix(e.UserAgent, "kubectl/") || e.Stage != "ResponseComplete" {
			continue
		}
		kubectlRequests = append(kubectlRequests, e.Verb+" "+e.RequestURI)
		if strings.HasPrefix(e.RequestURI, "/openapi/v3") {
			openapi++
		}
		if e.Verb == "create" && strings.Contains(e.RequestURI, "fieldValidation=Strict") &&
			strings.Contains(e.RequestURI, "fieldManager=kubectl-client-side-apply") {
			strictCreates++
		}
	}
	t.Logf("kubectl apply's requests:\n%s", strings.Join(kubectlRequests, "\n"))
	if openapi == 0 || strictCreates == 0 {
		t.Errorf("kubectl apply: %d OpenAPI v3 requests, %d strict client-side-apply creates", openapi, strictCreates)
	}
	deployment, err := k.client.AppsV1().Deployments(agentNamespace).Get(ctx, agentName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := deployment.Annotations["kubectl.kubernetes.io/last-applied-configuration"]; !ok {
		t.Errorf("agent deployment lacks kubectl's last-applied annotation: %v", deployment.Annotations)
	}
	managers := []string{}
	for _, m := range deployment.ManagedFields {
		managers = append(managers, m.Manager)
	}
	if !strings.Contains(strings.Join(managers, ","), "kubectl-client-side-apply") {
		t.Errorf("agent deployment managers %v", managers)
	}
	if rt.ManifestApplies != 1 || !strings.Contains(rt.LastApplyOutput, "deployment.apps/"+agentName+" created") {
		t.Errorf("applies %d, output %q", rt.ManifestApplies, rt.LastApplyOutput)
	}

	// A Deployment that lost the agent image is re-applied: kubectl patches it, validated strictly.
	deployment.Spec.Template.Spec.Containers[0].Image = "example.invalid/other:v0"
	if _, err := k.client.AppsV1().Deployments(agentNamespace).Update(ctx, deployment, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLong(t, "the agent manifest re-applied", 20*time.Second, func() bool { return s.runtime(id).ManifestApplies == 2 })
	patched := false
	for _, e := range k.audit(t) {
		if strings.HasPrefix(e.UserAgent, "kubectl/") && e.Verb == "patch" && e.ObjectRef != nil && e.ObjectRef.Resource == "deployments" &&
			strings.Contains(e.RequestURI, "fieldValidation=Strict") {
			patched = true
		}
	}
	if !patched {
		t.Error("no strict kubectl patch of the agent deployment in the audit log")
	}
	if d, err := k.client.AppsV1().Deployments(agentNamespace).Get(ctx, agentName, metav1.GetOptions{}); err != nil ||
		containerImage(d.Spec.Template.Spec.Containers) != s.agentImage() {
		t.Errorf("agent deployment after the re-apply: %v", err)
	}

	// A lost main tunnel drops the informers; a reconnect opens the set again, once.
	agent.disconnectMain()
	waitLong(t, "informers stopped", 10*time.Second, func() bool { return s.runtime(id).Watches == 0 })
	waitLong(t, "watches closed", 10*time.Second, func() bool { return len(k.openWatches(t, "rancher-sim")) == 0 })
	agent.connectMain()
	waitLong(t, "watch set synced again", 30*time.Second, func() bool { return s.runtime(id).WatchesSynced == len(rancherWatchSet) })
	waitLong(t, "the watch set open once", 10*time.Second, func() bool {
		return reflect.DeepEqual(k.openWatches(t, "rancher-sim"), rancherWatches)
	})

	// Deleting the cluster in Rancher stops its informers while the tunnel is still up.
	if status, body := call(t, client, "DELETE", srv.URL+"/v3/clusters/"+id, ""); status/100 != 2 {
		t.Fatalf("delete: %d %v", status, body)
	}
	waitLong(t, "watches closed after the delete", 10*time.Second, func() bool { return len(k.openWatches(t, "rancher-sim")) == 0 })
}

// Rancher's caches are lasso clients whose HTTP client has no timeout, so a watch lasts as long
// as its reflector asks (5-10 min) however short the request timeout: 45 s in Rancher, 2 s here.
func TestWatchesOutliveTheRequestTimeout(t *testing.T) {
	k := sharedKube(t)
	s, srv, client := startSim(t, "v2.14.0")
	s.cfg.requestTimeout = 2 * time.Second
	id, token := createCluster(t, s, srv.URL, client, "long-watches")
	agent := newAgentSide(t, srv.URL, client, token, k.address, adminToken, k.caPEM, pingOnly())
	agent.connectMain()
	agent.connectSteve()
	waitLong(t, "the watch set synced", 60*time.Second, func() bool {
		return s.runtime(id).WatchesSynced == len(rancherWatchSet)
	})
	waitLong(t, "the watch set open in the apiserver", 10*time.Second, func() bool {
		return reflect.DeepEqual(k.openWatches(t, "rancher-sim"), rancherWatches)
	})
	before := k.openWatchIDs(t, "rancher-sim")
	// What is checked is an absence, so the test watches for three request timeouts: with the
	// timeout on the watches' client, each of them would have ended and been made again by then.
	time.Sleep(3 * s.cfg.requestTimeout)
	if after := k.openWatchIDs(t, "rancher-sim"); !reflect.DeepEqual(before, after) {
		t.Errorf("watches were cut and made again within %s:\nbefore %v\nafter  %v", 3*s.cfg.requestTimeout, before, after)
	}
}

func TestFidelityFlags(t *testing.T) {
	base := []string{"--state-dir", t.TempDir(), "--token", testToken}
	cfg, err := parseFlags(base)
	if err != nil || cfg.watchSet != watchSetRancher || cfg.browseClusters != 0 || cfg.browseInterval != 15*time.Second {
		t.Errorf("defaults: %+v %v", cfg, err)
	}
	if cfg, err := parseFlags(append(base, "--watch-set", "minimal", "--browse-clusters", "3", "--browse-interval", "2s")); err != nil ||
		cfg.watchSet != watchSetMinimal || cfg.browseClusters != 3 || cfg.browseInterval != 2*time.Second {
		t.Errorf("minimal: %+v %v", cfg, err)
	}
	for _, bad := range [][]string{{"--watch-set", "all"}, {"--browse-clusters", "-1"}, {"--browse-interval", "0s"}} {
		if _, err := parseFlags(append(append([]string(nil), base...), bad...)); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if set, err := watchSetFor(watchSetMinimal); err != nil || len(set) != 2 {
		t.Errorf("minimal set %d %v", len(set), err)
	}
}
