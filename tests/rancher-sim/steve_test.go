package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// seenRequest is what the agent-side steve handler received.
type seenRequest struct {
	Method, Host, Path, RawQuery string
	Header                       http.Header
}

// fakeSteve stands in for the Steve server the real agent runs on 127.0.0.1:6080: it records
// every request, answers /ping, pages /v1/nodes in two pages, echoes /v1/subscribe websocket
// messages, and fails /v1/pods while failPods is set.
type fakeSteve struct {
	mu       sync.Mutex
	seen     []seenRequest
	failPods bool
}

func (f *fakeSteve) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.seen = append(f.seen, seenRequest{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Clone()})
	failPods := f.failPods
	f.mu.Unlock()
	switch {
	case r.URL.Path == "/ping":
		_, _ = io.WriteString(w, "pong")
	case r.URL.Path == "/v1/subscribe":
		conn, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			typ, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			if err := conn.WriteMessage(typ, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	case r.URL.Path == "/v1/nodes" && r.URL.Query().Get("continue") == "":
		writeJSON(w, http.StatusOK, map[string]any{"type": "collection", "continue": "page2", "data": []any{map[string]any{"id": "n1"}}})
	case r.URL.Path == "/v1/pods" && failPods:
		http.Error(w, "boom", http.StatusInternalServerError)
	default:
		writeJSON(w, http.StatusOK, map[string]any{"type": "collection", "data": []any{}})
	}
}

func (f *fakeSteve) requests(path string) []seenRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []seenRequest
	for _, r := range f.seen {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// TestSteveProxyImpersonatesThroughTheSteveTunnel checks /k8s/clusters/<id>/v1/... against the
// agent side of a real remotedialer session: the request arrives on 127.0.0.1:6080 with the
// prefix stripped, no credentials, Rancher's impersonation headers and X-API-URL-Prefix, and a
// websocket upgrade passes through.
func TestSteveProxyImpersonatesThroughTheSteveTunnel(t *testing.T) {
	s, srv, client := startSim(t, "v2.14.0")
	id, token := createCluster(t, s, srv.URL, client, "browse")
	steve := &fakeSteve{}
	agent := newAgentSide(t, srv.URL, client, token, "127.0.0.1:1", "unused", []byte("unused"), steve)
	agent.connectSteve()
	waitFor(t, "steve session", func() bool { return s.tunnel.HasSession(steveTokenPrefix + id) })

	get := func(path string, header http.Header) (int, string) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = header
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	auth := func(extra http.Header) http.Header {
		h := http.Header{"Authorization": {"Bearer " + testToken}}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}

	// As a named user with provider groups; a client-sent Impersonate-User is not passed on.
	status, body := get("/k8s/clusters/"+id+"/v1/nodes?limit=5&simUser=ignored-by-header", auth(http.Header{
		headerSimUser: {"u-bob"}, headerSimGroups: {"devs, ops"}, "Impersonate-User": {"system:admin"},
	}))
	if status != 200 {
		t.Fatalf("GET nodes as u-bob: %d %s", status, body)
	}
	seen := steve.requests("/v1/nodes")
	if len(seen) != 1 {
		t.Fatalf("steve saw %d /v1/nodes requests", len(seen))
	}
	r := seen[0]
	want := map[string][]string{
		"Impersonate-User":                 {"u-bob"},
		"Impersonate-Group":                {"devs", "ops", "system:authenticated", "system:cattle:authenticated"},
		"Impersonate-Extra-Principalid":    {"local://u-bob"},
		"Impersonate-Extra-Username":       {"u-bob"},
		"Impersonate-Extra-Requesttokenid": {strings.SplitN(testToken, ":", 2)[0]},
		"Impersonate-Extra-Requesthost":    {strings.TrimPrefix(srv.URL, "https://")},
		"X-Api-Url-Prefix":                 {"/k8s/clusters/" + id},
		"X-Forwarded-Proto":                {"https"},
	}
	for k, v := range want {
		if got := r.Header.Values(k); strings.Join(got, "|") != strings.Join(v, "|") {
			t.Errorf("%s: got %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"Authorization", headerSimUser, headerSimGroups} {
		if r.Header.Get(k) != "" {
			t.Errorf("%s forwarded to the agent: %q", k, r.Header.Get(k))
		}
	}
	// The upgrade-aware proxy keeps the incoming Host (Rancher's own), as in Rancher.
	if r.Host != strings.TrimPrefix(srv.URL, "https://") || r.RawQuery != "limit=5" {
		t.Errorf("host %q query %q", r.Host, r.RawQuery)
	}
	agent.mu.Lock()
	for _, a := range agent.dialed {
		if a != steveAddress && a != "not-used:80" {
			t.Errorf("Rancher dialed %q through the steve tunnel", a)
		}
	}
	agent.mu.Unlock()

	// The admin by default.
	if status, body := get("/k8s/clusters/"+id+"/v1/schemas", auth(nil)); status != 200 {
		t.Fatalf("GET schemas: %d %s", status, body)
	}
	if got := steve.requests("/v1/schemas")[0].Header.Values("Impersonate-User"); len(got) != 1 || got[0] != adminUser {
		t.Errorf("default user %q", got)
	}

	// No Rancher credentials, unknown cluster.
	if status, _ := get("/k8s/clusters/"+id+"/v1/nodes", http.Header{}); status != http.StatusUnauthorized {
		t.Errorf("without a token: %d", status)
	}
	if status, _ := get("/k8s/clusters/c-nothere/v1/nodes", auth(nil)); status != http.StatusNotFound {
		t.Errorf("unknown cluster: %d", status)
	}

	// /v1/subscribe: the websocket goes through to the agent and back.
	wsURL := strings.Replace(srv.URL, "https://", "wss://", 1) + "/k8s/clusters/" + id + "/v1/subscribe"
	conn, resp, err := agent.dialer.Dial(wsURL, auth(nil))
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("subscribe: %v (%d)", err, status)
	}
	defer conn.Close()
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"resourceType":"pods"}`)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := conn.ReadMessage()
	if err != nil || string(msg) != `echo:{"resourceType":"pods"}` {
		t.Fatalf("subscribe echo %q %v", msg, err)
	}
	if sub := steve.requests("/v1/subscribe"); len(sub) != 1 || sub[0].Header.Get("Impersonate-User") != adminUser {
		t.Errorf("subscribe requests %+v", sub)
	}
}

// TestBrowseLoop checks the browse rounds: schemas, counts, node pages followed through
// "continue", pods; latencies and errors in the cluster's stats and /sim/stats.
func TestBrowseLoop(t *testing.T) {
	s, srv, client := startSim(t, "v2.14.0")
	s.cfg.browseClusters, s.cfg.browseInterval = 1, 50*time.Millisecond
	id, token := createCluster(t, s, srv.URL, client, "browsed")
	other, _ := createCluster(t, s, srv.URL, client, "not-browsed")
	steve := &fakeSteve{}
	agent := newAgentSide(t, srv.URL, client, token, "127.0.0.1:1", "unused", []byte("unused"), steve)
	agent.connectSteve()
	waitFor(t, "two browse rounds", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.stats(id).Browse
		return b != nil && b.Rounds >= 2
	})
	for _, path := range []string{"/v1/schemas", "/v1/counts", "/v1/pods"} {
		if len(steve.requests(path)) == 0 {
			t.Errorf("no %s request", path)
		}
	}
	var pages []string
	for _, r := range steve.requests("/v1/nodes") {
		pages = append(pages, r.RawQuery)
	}
	if len(pages) < 2 || pages[0] != "limit=100" || pages[1] != "continue=page2&limit=100" {
		t.Errorf("node pages %q", pages)
	}
	s.mu.Lock()
	if b := s.stats(other).Browse; b != nil {
		t.Errorf("cluster beyond --browse-clusters browsed: %+v", b)
	}
	s.mu.Unlock()

	steve.mu.Lock()
	steve.failPods = true
	steve.mu.Unlock()
	waitFor(t, "a failed pods list counted", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		b := s.stats(id).Browse
		return b.Errors > 0 && strings.Contains(b.LastError, "500")
	})

	resp, err := client.Get(srv.URL + "/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var global struct {
		BrowsedClusters int           `json:"browsedClusters"`
		Browse          browseSummary `json:"browse"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&global); err != nil {
		t.Fatal(err)
	}
	if global.BrowsedClusters != 1 || global.Browse.Requests < 10 || global.Browse.Errors == 0 ||
		global.Browse.P50Ms <= 0 || global.Browse.P99Ms < global.Browse.P50Ms {
		t.Errorf("/sim/stats browse %+v", global)
	}
	stats, err := client.Get(fmt.Sprintf("%s/sim/clusters/%s/stats", srv.URL, id))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Body.Close()
	var one struct {
		Stats struct {
			Browse browseSummary `json:"browse"`
		} `json:"stats"`
	}
	if err := json.NewDecoder(stats.Body).Decode(&one); err != nil || one.Stats.Browse.Rounds < 2 {
		t.Errorf("cluster stats browse %+v %v", one, err)
	}
}

func TestPercentile(t *testing.T) {
	samples := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	if p := percentile(samples, 0.5); p != 5 {
		t.Errorf("p50 %v", p)
	}
	if p := percentile(samples, 0.99); p != 10 {
		t.Errorf("p99 %v", p)
	}
	if p := percentile(nil, 0.5); p != 0 {
		t.Errorf("empty %v", p)
	}
}
