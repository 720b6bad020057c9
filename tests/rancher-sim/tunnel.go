package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

const (
	headerTunnelToken  = "X-API-Tunnel-Token"
	headerTunnelParams = "X-API-Tunnel-Params"
	steveTokenPrefix   = "stv-cluster-"
	maxParamsHistory   = 1000
)

// errClusterNotFound is the mcm authorizer's error for an unknown registration token
// (pkg/tunnelserver/mcmauthorizer/tunnel.go ErrClusterNotFound); it becomes a 400.
var errClusterNotFound = errors.New("cluster not found")

// tunnelAttempt carries what the authorizer decided to the session bookkeeping around it.
type tunnelAttempt struct {
	clusterID string
	steve     bool
}

type attemptKey struct{}

// hijackWatch notices the websocket upgrade: only a hijacked connection is a session.
type hijackWatch struct {
	http.ResponseWriter
	onHijack func()
	hijacked bool
}

func (h *hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be hijacked")
	}
	conn, rw, err := hj.Hijack()
	if err == nil {
		h.hijacked = true
		h.onHijack()
	}
	return conn, rw, err
}

func (h *hijackWatch) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// handleTunnel serves /v3/connect and /v3/connect/register (one handler in Rancher too) on the
// upstream remotedialer server; ServeHTTP returns when the session ends.
func (s *sim) handleTunnel(w http.ResponseWriter, r *http.Request) {
	attempt := &tunnelAttempt{}
	r = r.WithContext(context.WithValue(r.Context(), attemptKey{}, attempt))
	watch := &hijackWatch{ResponseWriter: w}
	watch.onHijack = func() { s.sessionChange(attempt, +1) }
	s.tunnel.ServeHTTP(watch, r)
	if watch.hijacked {
		s.sessionChange(attempt, -1)
	}
}

// maxConnectTimes bounds the connect times kept per cluster.
const maxConnectTimes = 32

func (s *sim) sessionChange(a *tunnelAttempt, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.stats(a.clusterID)
	switch {
	case a.steve && delta > 0:
		rt.SteveConnects++
		rt.SteveSessionOpen++
	case a.steve:
		rt.SteveDisconnects++
		rt.SteveSessionOpen--
	case delta > 0:
		rt.MainConnects++
		rt.MainSessionsOpen++
		rt.MainConnectTimes = append(rt.MainConnectTimes, time.Now().UnixMilli())
		if len(rt.MainConnectTimes) > maxConnectTimes {
			rt.MainConnectTimes = rt.MainConnectTimes[1:]
		}
	default:
		rt.MainDisconnects++
		rt.MainSessionsOpen--
	}
	s.logf("cluster %s: %s tunnel %s", a.clusterID, map[bool]string{true: "steve", false: "main"}[a.steve],
		map[bool]string{true: "connected", false: "disconnected"}[delta > 0])
	s.kick(a.clusterID)
}

// authorizeTunnel is Rancher's authorizer chain (pkg/tunnelserver/chain.go): the mcm authorizer
// for the main tunnel, then the steve proxy authorizer; the first error wins when none accepts.
func (s *sim) authorizeTunnel(req *http.Request) (string, bool, error) {
	attempt, _ := req.Context().Value(attemptKey{}).(*tunnelAttempt)
	if attempt == nil {
		attempt = &tunnelAttempt{}
	}
	key, ok, err := s.authorizeMain(req, attempt)
	if ok && err == nil {
		return key, true, nil
	}
	firstErr := err
	key, ok, err = s.authorizeSteve(req, attempt)
	if ok && err == nil {
		return key, true, nil
	}
	if firstErr == nil {
		firstErr = err
	}
	return "", false, firstErr
}

type tunnelParams struct {
	Node    json.RawMessage `json:"node"`
	Cluster *struct {
		Address string `json:"address"`
		Token   string `json:"token"`
		CACert  string `json:"caCert"`
	} `json:"cluster"`
}

// authorizeMain follows mcmauthorizer Authorize/readInput/authorizeCluster for a cluster agent.
func (s *sim) authorizeMain(req *http.Request, attempt *tunnelAttempt) (string, bool, error) {
	token := req.Header.Get(headerTunnelToken)
	if token == "" {
		return "", false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.clusterByToken(token, time.Now())
	if rec == nil {
		return "", false, errClusterNotFound
	}
	raw := req.Header.Get(headerTunnelParams)
	params, err := readParams(raw)
	if err != nil {
		rt := s.stats(rec.ID)
		rt.Rejected++
		rt.LastRejection = err.Error()
		return "", false, err
	}
	apiEndpoint := "https://" + params.Cluster.Address
	rt := s.stats(rec.ID)
	if rec.Driver == "" && rt.Conflicts == 0 {
		// Real Rancher (v2.15.0) often answers the first connect of a new cluster this way: its
		// authorizer updates the cluster object while its controllers also do, and the losing
		// update's error becomes the 400 the agent sees. The real agent just reconnects.
		rt.Conflicts++
		return "", false, fmt.Errorf("Operation cannot be fulfilled on clusters.management.cattle.io %q: "+
			"the object has been modified; please apply your changes to the latest version and try again", rec.ID)
	}
	if rec.Driver == "" {
		rec.Driver = "imported"
	}
	if rec.APIEndpoint != "" && (rec.APIEndpoint != apiEndpoint || rec.CACert != params.Cluster.CACert || rec.SAToken != params.Cluster.Token) {
		rec.ParamsChanges++
	}
	rec.APIEndpoint, rec.CACert, rec.SAToken = apiEndpoint, params.Cluster.CACert, params.Cluster.Token
	if len(rec.ParamsHistory) < maxParamsHistory {
		rec.ParamsHistory = append(rec.ParamsHistory, raw)
	}
	if err := s.st.save(); err != nil {
		return "", true, err
	}
	attempt.clusterID = rec.ID
	return rec.ID, true, nil
}

func readParams(raw string) (*tunnelParams, error) {
	decoded, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return nil, err
	}
	var p tunnelParams
	if err := json.Unmarshal(decoded, &p); err != nil {
		return nil, err
	}
	hasNode := len(p.Node) > 0 && string(p.Node) != "null"
	switch {
	case !hasNode && p.Cluster == nil:
		return nil, errors.New("missing node or cluster registration info")
	case hasNode:
		// Rancher would treat this as a node agent; a cluster agent must never send "node".
		return nil, errors.New("rancher-sim: node agent registration is not simulated")
	case p.Cluster.Address == "":
		return nil, errors.New("invalid input, address empty")
	case p.Cluster.Token == "":
		return nil, errors.New("invalid input, token empty")
	case p.Cluster.CACert == "":
		return nil, errors.New("invalid input, caCert empty")
	}
	return &p, nil
}

// authorizeSteve follows pkg/api/steve/proxy/auth.go: "Bearer stv-cluster-<CRT token>" names the
// session stv-cluster-<cluster>; anything else is simply not this authorizer's (no error).
func (s *sim) authorizeSteve(req *http.Request, attempt *tunnelAttempt) (string, bool, error) {
	auth := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer ")
	token, ok := strings.CutPrefix(auth, steveTokenPrefix)
	if !ok {
		return "", false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.clusterByToken(token, time.Now())
	if rec == nil {
		return "", false, nil
	}
	attempt.clusterID = rec.ID
	attempt.steve = true
	return steveTokenPrefix + rec.ID, true, nil
}
