package main

// Rancher's steve proxy (pkg/api/steve/proxy/proxy.go in rancher/rancher v2.15.0, with
// pkg/proxy/proxy.go of rancher/steve v0.9.18 that it calls): every /k8s/clusters/<id>/v1/...
// request of the UI is sent, without credentials and with the Rancher user impersonated, through
// the cluster's steve tunnel (session stv-cluster-<id>) to 127.0.0.1:6080 on the agent side, where
// the real cattle-cluster-agent serves Steve. Websocket upgrades (/v1/subscribe) pass through.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/proxy"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"
)

const (
	// steveAddress is where the agent's Steve listens, the only address Rancher dials on the
	// steve tunnel.
	steveAddress = "127.0.0.1:6080"
	// adminUser is the id of the simulated Rancher admin (the creator of every cluster).
	adminUser = "user-sim01"
	// headerSimUser and headerSimGroups choose the impersonated Rancher user of a proxied request
	// (the query parameter simUser works too); they are the simulator's own and never forwarded.
	headerSimUser   = "X-Sim-User"
	headerSimGroups = "X-Sim-Groups"
	querySimUser    = "simUser"
	// steveDialAttempts is how often Rancher's proxy dialer retries while the steve session is
	// missing (a reconnecting agent), one second apart.
	steveDialAttempts = 15
)

// rancherUser is the identity Rancher's authentication filter attaches to a request
// (pkg/auth/requests/authenticate.go): the user id, its groups plus system:authenticated and
// system:cattle:authenticated, and the extras that the proxy sends as Impersonate-Extra-*.
type rancherUser struct {
	name   string
	groups []string
	extra  map[string][]string
}

// requestUser is the user a proxied request runs as: the admin by default, or the one named by
// X-Sim-User / ?simUser= (with X-Sim-Groups, comma-separated, as its provider groups).
func (s *sim) requestUser(r *http.Request) rancherUser {
	name := r.Header.Get(headerSimUser)
	if name == "" {
		name = r.URL.Query().Get(querySimUser)
	}
	username := name
	if name == "" {
		name, username = adminUser, "admin"
	}
	var groups []string
	for _, g := range strings.Split(r.Header.Get(headerSimGroups), ",") {
		if g = strings.TrimSpace(g); g != "" {
			groups = append(groups, g)
		}
	}
	tokenName, _, _ := strings.Cut(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), ":")
	return newRancherUser(name, username, groups, tokenName, r.Host)
}

// newRancherUser builds the identity of a local user; tokenName and host are left out of the
// extras when empty (the browse loop has no request of its own).
func newRancherUser(name, username string, groups []string, tokenName, host string) rancherUser {
	groups = append(append([]string(nil), groups...), "system:authenticated", "system:cattle:authenticated")
	extra := map[string][]string{"principalid": {"local://" + name}, "username": {username}}
	if tokenName != "" {
		extra["requesttokenid"] = []string{tokenName}
	}
	if host != "" {
		extra["requesthost"] = []string{host}
	}
	return rancherUser{name: name, groups: groups, extra: extra}
}

// steveDialer dials the agent's Steve through the cluster's steve session, waiting like Rancher
// for a session that is being re-established.
func (s *sim) steveDialer(clusterID string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		dial := s.tunnel.Dialer(steveTokenPrefix + clusterID)
		var lastErr error
		for i := 0; i < steveDialAttempts; i++ {
			conn, err := dial(ctx, network, steveAddress)
			if err == nil {
				return conn, nil
			}
			lastErr = err
			if !strings.Contains(err.Error(), "failed to find Session for client") {
				break
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		return nil, fmt.Errorf("lost connection to cluster: %w", lastErr)
	}
}

// steveConfig is the proxy's client configuration: http://<cluster id> over the steve dialer, the
// user impersonated, no credentials.
func (s *sim) steveConfig(clusterID string, user rancherUser) *rest.Config {
	ht := http.DefaultTransport.(*http.Transport).Clone()
	ht.Proxy = nil
	ht.DialContext = s.steveDialer(clusterID)
	return &rest.Config{
		Host:      "http://" + clusterID,
		UserAgent: rest.DefaultKubernetesUserAgent() + " cluster " + clusterID,
		Transport: ht,
		Impersonate: rest.ImpersonationConfig{
			UserName: user.name, Groups: user.groups, Extra: user.extra,
		},
	}
}

type proxyErrorResponder struct{}

func (proxyErrorResponder) Error(w http.ResponseWriter, _ *http.Request, err error) {
	http.Error(w, err.Error(), http.StatusBadGateway)
}

// steveHandler proxies one request as Rancher's does: the /k8s/clusters/<id> prefix stripped and
// sent as X-API-URL-Prefix (Steve builds its links with it), Authorization and any client
// Impersonate-* header dropped, Impersonate-User/-Group/-Extra-* set from the user.
func (s *sim) steveHandler(clusterID string, user rancherUser) (http.Handler, error) {
	cfg := s.steveConfig(clusterID, user)
	target, err := url.Parse(cfg.Host + "/")
	if err != nil {
		return nil, err
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	tc, err := cfg.TransportConfig()
	if err != nil {
		return nil, err
	}
	upgrader, err := transport.HTTPWrappersForConfig(tc, proxy.MirrorRequest)
	if err != nil {
		return nil, err
	}
	upgradeAware := proxy.NewUpgradeAwareHandler(target, rt, false, false, proxyErrorResponder{})
	upgradeAware.UpgradeTransport = proxy.NewUpgradeRequestRoundTripper(rt, upgrader)
	upgradeAware.UseRequestLocation = true
	prefix := "/k8s/clusters/" + clusterID
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.Clone(r.Context())
		for k := range r.Header {
			if strings.HasPrefix(k, "Impersonate-") || k == headerSimUser || k == headerSimGroups {
				delete(r.Header, k)
			}
		}
		r.Header.Del("Authorization")
		r.Header.Set("X-API-URL-Prefix", prefix)
		if r.Header.Get("X-Forwarded-Proto") == "" && r.TLS != nil {
			r.Header.Set("X-Forwarded-Proto", "https")
		}
		if q := r.URL.Query(); q.Has(querySimUser) {
			q.Del(querySimUser)
			r.URL.RawQuery = q.Encode()
		}
		p := strings.TrimPrefix(r.URL.Path, prefix)
		if !strings.HasPrefix(p, "/") {
			p = "/" + p
		}
		r.URL.Path, r.URL.RawPath = p, ""
		upgradeAware.ServeHTTP(w, r)
	}), nil
}

// handleSteve serves /k8s/clusters/{id}/v1/... for an authenticated caller.
func (s *sim) handleSteve(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	rec, ok := s.st.Clusters[id]
	exists := ok && rec.Removing == nil
	s.mu.Unlock()
	if !exists {
		apiError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("cluster %q not found", id), "")
		return
	}
	handler, err := s.steveHandler(id, s.requestUser(r))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	handler.ServeHTTP(w, r)
}

// steveClient is an HTTP client whose requests go through the same proxy path as the UI's, for
// the browse loop; URLs are http://<cluster id>/v1/....
func (s *sim) steveClient(clusterID string, user rancherUser) (*http.Client, error) {
	rt, err := rest.TransportFor(s.steveConfig(clusterID, user))
	if err != nil {
		return nil, err
	}
	prefix := "/k8s/clusters/" + clusterID
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: roundTripperFunc(func(r *http.Request) (*http.Response, error) {
			r = r.Clone(r.Context())
			r.Header.Set("X-API-URL-Prefix", prefix)
			return rt.RoundTrip(r)
		}),
	}, nil
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
