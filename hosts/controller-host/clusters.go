package main

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"time"
)

// dnsLabel is an RFC 1123 label, which every simulated cluster name is; anything else (a path, a
// dot, an upper-case letter) is refused before it touches the file system.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// part is one set of controllers run for a cluster (kube-controller-manager's, kwok's). It runs
// until ctx ends, or returns an error to be retried.
type part struct {
	name string
	run  func(ctx context.Context, cluster string) error
}

// Retry delays after a part fails: doubling from retryMin to retryMax; a part that ran for
// stableAfter before failing starts over at retryMin.
var (
	retryMin    = time.Second
	retryMax    = 30 * time.Second
	stableAfter = time.Minute
	// stopTimeout bounds how long a removal waits for a cluster's goroutines to end.
	stopTimeout = 30 * time.Second
)

// clusters runs every registered cluster's parts, each cluster under its own context.
type clusters struct {
	ctx   context.Context
	parts []part

	mu      sync.Mutex
	running map[string]*cluster
}

// cluster is one registered cluster: its context and each part's last state.
type cluster struct {
	cancel context.CancelFunc
	done   chan struct{} // closed once every part's goroutine has returned

	mu     sync.Mutex
	states map[string]*partState
}

// partState is what GET /clusters reports for one part.
type partState struct {
	Running   bool   `json:"running"`
	Restarts  int    `json:"restarts"`
	LastError string `json:"lastError,omitempty"`
}

func newClusters(ctx context.Context, parts ...part) *clusters {
	return &clusters{ctx: ctx, parts: parts, running: map[string]*cluster{}}
}

// add starts the cluster's parts unless they run already; it reports whether it started them.
func (cs *clusters) add(name string) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if _, ok := cs.running[name]; ok {
		return false
	}
	ctx, cancel := context.WithCancel(cs.ctx)
	c := &cluster{cancel: cancel, done: make(chan struct{}), states: map[string]*partState{}}
	var wg sync.WaitGroup
	for _, p := range cs.parts {
		c.states[p.name] = &partState{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.keepRunning(ctx, name, p)
		}()
	}
	go func() {
		wg.Wait()
		close(c.done)
	}()
	cs.running[name] = c
	slog.Info("cluster added", "cluster", name)
	return true
}

// remove stops the cluster's parts and waits (bounded) for their goroutines to end; it reports
// whether the cluster was registered.
func (cs *clusters) remove(name string) (bool, error) {
	cs.mu.Lock()
	c, ok := cs.running[name]
	delete(cs.running, name)
	cs.mu.Unlock()
	if !ok {
		return false, nil
	}
	c.cancel()
	select {
	case <-c.done:
		slog.Info("cluster removed", "cluster", name)
		return true, nil
	case <-time.After(stopTimeout):
		return true, errors.New("its controllers did not stop in time")
	}
}

// removeAll stops every cluster (on shutdown).
func (cs *clusters) removeAll() {
	for _, name := range cs.names() {
		if _, err := cs.remove(name); err != nil {
			slog.Warn("cluster did not stop", "cluster", name, "error", err)
		}
	}
}

func (cs *clusters) names() []string {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]string, 0, len(cs.running))
	for name := range cs.running {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// states is every cluster's parts' states, for GET /clusters.
func (cs *clusters) states() map[string]map[string]partState {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make(map[string]map[string]partState, len(cs.running))
	for name, c := range cs.running {
		c.mu.Lock()
		parts := make(map[string]partState, len(c.states))
		for p, st := range c.states {
			parts[p] = *st
		}
		c.mu.Unlock()
		out[name] = parts
	}
	return out
}

// keepRunning runs one part until ctx ends, retrying it with a backoff when it fails: one
// cluster's failure (a bad kubeconfig, its apiserver down) stays in that cluster.
func (c *cluster) keepRunning(ctx context.Context, name string, p part) {
	delay := retryMin
	for {
		c.update(p.name, func(st *partState) { st.Running = true })
		begun := time.Now()
		err := p.run(ctx, name)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("stopped unexpectedly")
		}
		if time.Since(begun) >= stableAfter {
			delay = retryMin
		}
		c.update(p.name, func(st *partState) {
			st.Running = false
			st.Restarts++
			st.LastError = err.Error()
		})
		slog.Warn("controllers failed; retrying", "cluster", name, "controllers", p.name, "error", err, "retryIn", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, retryMax)
	}
}

func (c *cluster) update(part string, f func(*partState)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.states[part])
}
