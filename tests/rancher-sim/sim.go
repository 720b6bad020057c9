package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/rancher/remotedialer"
)

// Condition types, as on a management.cattle.io Cluster.
const (
	condPending       = "Pending"
	condProvisioned   = "Provisioned"
	condWaiting       = "Waiting"
	condConnected     = "Connected"
	condReady         = "Ready"
	condAgentDeployed = "AgentDeployed"
)

var conditionOrder = []string{condPending, condProvisioned, condWaiting, condConnected, condReady, condAgentDeployed}

type condition struct {
	Type           string `json:"type"`
	Status         string `json:"status"`
	Reason         string `json:"reason,omitempty"`
	Message        string `json:"message,omitempty"`
	LastUpdateTime string `json:"lastUpdateTime,omitempty"`
}

// runtimeStats is what the simulator did for one cluster since this process started.
type runtimeStats struct {
	MainConnects    int `json:"mainConnects"`
	MainDisconnects int `json:"mainDisconnects"`
	// MainConnectTimes are the unix milliseconds of the latest main connects (at most
	// maxConnectTimes), to see how a reconnect storm spread out.
	MainConnectTimes []int64 `json:"mainConnectTimes"`
	SteveConnects    int     `json:"steveConnects"`
	SteveDisconnects int     `json:"steveDisconnects"`
	// Rejected counts /v3/connect attempts refused for this cluster (bad params).
	Rejected      int    `json:"rejected"`
	LastRejection string `json:"lastRejection,omitempty"`
	// Conflicts counts main connects refused with Rancher's transient update conflict.
	Conflicts int `json:"conflicts"`

	PingsOK         int    `json:"pingsOk"`
	PingsFailed     int    `json:"pingsFailed"`
	HealthOK        int    `json:"healthOk"`
	HealthFailed    int    `json:"healthFailed"`
	KubeVersion     string `json:"kubeVersion,omitempty"`
	InformersSynced bool   `json:"informersSynced"`
	InformerStarts  int    `json:"informerStarts"`
	// WatchSet names the informer set held on the cluster (--watch-set); Watches counts the
	// informers running now (each one list and one open watch), WatchesSynced those listed.
	WatchSet      string `json:"watchSet"`
	Watches       int    `json:"watches"`
	WatchesSynced int    `json:"watchesSynced"`
	WatchErrors   int    `json:"watchErrors"`
	// Browse is the browse loop\'s record (--browse-clusters), absent for clusters not browsed.
	Browse          *browseStats `json:"browse,omitempty"`
	NodesSeen       []string     `json:"nodesSeen"`
	NamespacesSeen  []string     `json:"namespacesSeen"`
	ImpersonationOK bool         `json:"impersonationTokenOk"`
	ImpersonationSA string       `json:"impersonationServiceAccount,omitempty"`
	AgentDeployed   bool         `json:"agentDeploymentCreated"`
	AgentImage      string       `json:"agentImage,omitempty"`
	ManifestApplies int          `json:"manifestApplies"`
	// LastApplyOutput is what kubectl apply printed last ("deployment.apps/... configured").
	LastApplyOutput  string `json:"lastApplyOutput,omitempty"`
	LastError        string `json:"lastError,omitempty"`
	LastErrorTime    string `json:"lastErrorTime,omitempty"`
	ConnectedNow     bool   `json:"connected"`
	MainSessionsOpen int    `json:"mainSessionsOpen"`
	SteveSessionOpen int    `json:"steveSessionsOpen"`

	everReady  bool
	conditions map[string]condition
}

func newRuntimeStats() *runtimeStats {
	return &runtimeStats{NodesSeen: []string{}, NamespacesSeen: []string{}, conditions: map[string]condition{}}
}

type sim struct {
	ctx    context.Context
	cfg    config
	ca     *authority
	tunnel *remotedialer.Server

	mu          sync.Mutex
	st          *store
	rt          map[string]*runtimeStats
	controllers map[string]context.CancelFunc
	kicks       map[string]chan struct{}
	// hideClustersUntil is the end of an injected "clusters hidden" fault (see handleFaults).
	hideClustersUntil time.Time
}

func newSim(ctx context.Context, cfg config, st *store, ca *authority) *sim {
	s := &sim{
		ctx:         ctx,
		cfg:         cfg,
		ca:          ca,
		st:          st,
		rt:          map[string]*runtimeStats{},
		controllers: map[string]context.CancelFunc{},
		kicks:       map[string]chan struct{}{},
	}
	s.tunnel = remotedialer.New(s.authorizeTunnel, remotedialer.DefaultErrorWriter)
	return s
}

// stats returns the runtime record of a cluster, creating it. Callers hold s.mu.
func (s *sim) stats(id string) *runtimeStats {
	rt, ok := s.rt[id]
	if !ok {
		rt = newRuntimeStats()
		s.rt[id] = rt
	}
	return rt
}

// setCondition records a condition, keeping lastUpdateTime when nothing changed. Callers hold s.mu.
func (rt *runtimeStats) setCondition(typ, status, reason, message string) {
	old, ok := rt.conditions[typ]
	if ok && old.Status == status && old.Reason == reason && old.Message == message {
		return
	}
	rt.conditions[typ] = condition{
		Type: typ, Status: status, Reason: reason, Message: message,
		LastUpdateTime: time.Now().UTC().Format(time.RFC3339),
	}
}

func (rt *runtimeStats) conditionStatus(typ string) string {
	if c, ok := rt.conditions[typ]; ok {
		return c.Status
	}
	return ""
}

func (rt *runtimeStats) fail(format string, args ...any) {
	rt.LastError = fmt.Sprintf(format, args...)
	rt.LastErrorTime = time.Now().UTC().Format(time.RFC3339)
}

func (rt *runtimeStats) conditionList() []condition {
	out := []condition{}
	for _, typ := range conditionOrder {
		if c, ok := rt.conditions[typ]; ok {
			out = append(out, c)
		}
	}
	return out
}

// clusterState derives state, transitioning and transitioningMessage from the conditions the way
// Rancher's summarizer presents an imported cluster: pending until the first tunnel, waiting until
// everything Rancher needs succeeded, active, and unavailable once a ready cluster loses it.
func clusterState(rec *clusterRecord, rt *runtimeStats) (string, string, string) {
	if rec.Removing != nil {
		return "removing", "yes", "waiting on cleanup of the cluster"
	}
	if rec.Driver == "" {
		return "pending", "yes", "waiting for full cluster configuration"
	}
	if rt.everReady && rt.conditionStatus(condReady) == "False" {
		return "unavailable", "yes", rt.conditions[condReady].Message
	}
	if rt.conditionStatus(condAgentDeployed) == "False" {
		return "waiting", "error", rt.conditions[condAgentDeployed].Message
	}
	if missing := missingForActive(rt); missing != "" {
		return "waiting", "yes", missing
	}
	return "active", "no", ""
}

// missingForActive names the first thing still missing before a cluster can be active.
func missingForActive(rt *runtimeStats) string {
	switch {
	case rt.conditionStatus(condConnected) != "True":
		return "waiting for the steve tunnel to answer /ping"
	case !rt.InformersSynced:
		return "waiting for downstream controllers to sync"
	case rt.conditionStatus(condReady) != "True":
		return "waiting for the cluster API to be healthy"
	case rt.KubeVersion == "":
		return "waiting for the cluster version"
	case len(rt.NodesSeen) == 0:
		return "waiting for at least one node"
	case !rt.ImpersonationOK:
		return "waiting for the impersonation service account token"
	case rt.conditionStatus(condAgentDeployed) != "True":
		return "waiting for the cluster agent to be deployed"
	}
	return ""
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// isLoopback reports whether the request came from this machine; the debug endpoints are
// unauthenticated, so they refuse everyone else even if --listen is not a loopback address.
func isLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *sim) logf(format string, args ...any) {
	log.Printf(format, args...)
}
