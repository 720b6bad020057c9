package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rancher/remotedialer"
)

const testToken = "token-test1:secret"

// startSim runs the simulator's handler on a TLS test server signed by its own CA.
func startSim(t *testing.T, version string) (*sim, *httptest.Server, *http.Client) {
	t.Helper()
	dir := t.TempDir()
	ca, err := loadOrCreateCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := ca.servingCert()
	if err != nil {
		t.Fatal(err)
	}
	st, err := openStore(dir + "/state.json")
	if err != nil {
		t.Fatal(err)
	}
	v, err := parseRancherVersion(version)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := config{tokens: []string{testToken}, probeInterval: 100 * time.Millisecond, tokenWait: time.Second, version: v, agentTLSMode: "strict", watchSet: watchSetRancher, requestTimeout: rancherRequestTimeout}
	s := newSim(ctx, cfg, st, ca)
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = s.routes()
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serving}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	s.cfg.serverURL = srv.URL
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return s, srv, &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func call(t *testing.T, c *http.Client, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestTunnelAuthorizersParamsAndConnectedProbe(t *testing.T) {
	s, srv, client := startSim(t, "v2.12.3")
	status, created := call(t, client, "POST", srv.URL+"/v3/clusters", `{"type":"cluster","name":"t1","importedConfig":{}}`)
	if status != 201 {
		t.Fatalf("create: %d %v", status, created)
	}
	id := created["id"].(string)
	if created["state"] != "pending" {
		t.Fatalf("new cluster state %v", created["state"])
	}
	s.mu.Lock()
	token := s.st.Tokens[id+":default-token"].Token
	s.mu.Unlock()

	wsURL := strings.Replace(srv.URL, "https://", "wss://", 1) + "/v3/connect"
	dialer := &websocket.Dialer{TLSClientConfig: client.Transport.(*http.Transport).TLSClientConfig}
	upgrade := func(h http.Header) (int, string) {
		conn, resp, err := dialer.Dial(wsURL, h)
		if err == nil {
			conn.Close()
			return 101, ""
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	params := func(address, token, ca string) string {
		raw, _ := json.Marshal(map[string]any{"cluster": map[string]string{"address": address, "token": token, "caCert": ca}})
		return base64.StdEncoding.EncodeToString(raw)
	}
	for _, tc := range []struct {
		header http.Header
		code   int
		body   string
	}{
		{http.Header{headerTunnelToken: {"unknown"}, headerTunnelParams: {params("a:1", "t", "c")}}, 400, "cluster not found"},
		{http.Header{headerTunnelToken: {token}, headerTunnelParams: {params("", "t", "c")}}, 400, "invalid input, address empty"},
		{http.Header{headerTunnelToken: {token}, headerTunnelParams: {params("a:1", "", "c")}}, 400, "invalid input, token empty"},
		{http.Header{headerTunnelToken: {token}, headerTunnelParams: {params("a:1", "t", "")}}, 400, "invalid input, caCert empty"},
		{http.Header{headerTunnelToken: {token}, headerTunnelParams: {base64.StdEncoding.EncodeToString([]byte(`{}`))}}, 400, "missing node or cluster registration info"},
		{http.Header{"Authorization": {"Bearer stv-cluster-unknown"}}, 401, "failed authentication"},
		{http.Header{}, 401, "failed authentication"},
	} {
		if code, body := upgrade(tc.header); code != tc.code || body != tc.body {
			t.Errorf("%v: got %d %q, want %d %q", tc.header, code, body, tc.code, tc.body)
		}
	}

	good := params("127.0.0.1:6443", "sa-token", "Y2E=")
	// Real Rancher's first connect of a new cluster: its own update conflict, once.
	wantConflict := fmt.Sprintf("Operation cannot be fulfilled on clusters.management.cattle.io %q: the object has been modified; "+
		"please apply your changes to the latest version and try again", id)
	if code, body := upgrade(http.Header{headerTunnelToken: {token}, headerTunnelParams: {good}}); code != 400 || body != wantConflict {
		t.Errorf("first connect: got %d %q, want 400 %q", code, body, wantConflict)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	allow := func(string, string) bool { return true }
	for i := 0; i < 2; i++ { // two main sessions in a row: a reconnect with identical params
		sessionCtx, end := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = remotedialer.ClientConnect(sessionCtx, wsURL, http.Header{headerTunnelToken: {token}, headerTunnelParams: {good}}, dialer, allow, nil)
		}()
		waitFor(t, "main session", func() bool { return s.tunnel.HasSession(id) })
		end()
		<-done
		waitFor(t, "main session gone", func() bool { return !s.tunnel.HasSession(id) })
	}
	pong := func(ctx context.Context, network, address string) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			buf := make([]byte, 4096)
			_, _ = b.Read(buf)
			_, _ = b.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong"))
		}()
		return a, nil
	}
	go func() {
		_ = remotedialer.ConnectToProxyWithDialer(ctx, wsURL, http.Header{"Authorization": {"Bearer stv-cluster-" + token}}, allow, dialer, pong, nil)
	}()
	waitFor(t, "Connected=True", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.stats(id).conditionStatus(condConnected) == "True"
	})

	s.mu.Lock()
	defer s.mu.Unlock()
	rec, rt := s.st.Clusters[id], s.stats(id)
	if len(rec.ParamsHistory) != 2 || rec.ParamsHistory[0] != good || rec.ParamsHistory[1] != good || rec.ParamsChanges != 0 {
		t.Errorf("params history %v, changes %d", rec.ParamsHistory, rec.ParamsChanges)
	}
	if rec.Driver != "imported" || rec.APIEndpoint != "https://127.0.0.1:6443" {
		t.Errorf("driver %q endpoint %q", rec.Driver, rec.APIEndpoint)
	}
	if rt.MainConnects != 2 || rt.MainDisconnects != 2 || rt.SteveConnects != 1 || rt.Rejected != 4 || rt.Conflicts != 1 || rt.PingsOK == 0 {
		t.Errorf("stats %+v", rt)
	}
	// The main session is gone, so the cluster is not active however Connected looks.
	if state, _, _ := clusterState(rec, rt); state != "waiting" {
		t.Errorf("state %q, want waiting", state)
	}
}

func TestImportManifestCarriesChecksumAndCredentials(t *testing.T) {
	s, srv, client := startSim(t, "v2.8.9")
	_, created := call(t, client, "POST", srv.URL+"/v3/clusters", `{"type":"cluster","name":"t2","importedConfig":{}}`)
	id := created["id"].(string)
	s.mu.Lock()
	token := s.st.Tokens[id+":default-token"].Token
	s.mu.Unlock()
	resp, err := client.Get(srv.URL + "/v3/import/" + token + "_" + id + ".yaml")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	credentials := credentialsBase + s.credentialsKey(token, "")
	for _, want := range []string{
		"value: " + s.ca.checksum(), "name: CATTLE_CA_CHECKSUM", "name: " + credentials,
		"name: CATTLE_IS_RKE", "token: " + base64.StdEncoding.EncodeToString([]byte(token)), "name: STRICT_VERIFY",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("manifest lacks %q", want)
		}
	}
	if len(credentials) != len(credentialsBase)+7 {
		t.Errorf("2.8 credentials key %q is not 7 hex digits", credentials)
	}
	bad, err := client.Get(srv.URL + "/v3/import/" + "wrong_" + id + ".yaml")
	if err != nil {
		t.Fatal(err)
	}
	if bad.StatusCode != 400 {
		t.Errorf("wrong token: %d", bad.StatusCode)
	}
	bad.Body.Close()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
