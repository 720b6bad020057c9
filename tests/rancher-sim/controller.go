package main

import (
	"context"
	"net/http"
	"time"
)

// clusterController is Rancher's per-cluster work: the Connected probe over the steve tunnel and,
// through the main tunnel, what the downstream controllers do (downstream.go).
type clusterController struct {
	s    *sim
	id   string
	kick chan struct{}
	down *downstream
}

// startControllers runs a controller for every persisted cluster (after a restart).
func (s *sim) startControllers() {
	s.finishPendingRemovals()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.st.Clusters {
		s.startController(id)
	}
}

// startController starts the cluster's controller once. Callers hold s.mu.
func (s *sim) startController(id string) {
	if s.controllers[id] != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	c := &clusterController{s: s, id: id, kick: make(chan struct{}, 1)}
	s.controllers[id] = cancel
	s.kicks[id] = c.kick
	go c.run(ctx)
	if s.cfg.browseClusters > 0 {
		go c.browseLoop(ctx)
	}
}

// stopController ends the cluster's controller. Callers hold s.mu.
func (s *sim) stopController(id string) {
	if cancel := s.controllers[id]; cancel != nil {
		cancel()
	}
	delete(s.controllers, id)
	delete(s.kicks, id)
}

// kick makes the controller run its next pass now (a tunnel came or went). Callers hold s.mu.
func (s *sim) kick(id string) {
	if ch := s.kicks[id]; ch != nil {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (c *clusterController) run(ctx context.Context) {
	ticker := time.NewTicker(c.s.cfg.probeInterval)
	defer ticker.Stop()
	defer func() {
		if c.down != nil {
			c.down.stop()
		}
	}()
	for {
		c.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-c.kick:
		}
	}
}

// pass is one probe interval of Rancher's work for this cluster.
func (c *clusterController) pass(ctx context.Context) {
	s := c.s
	s.mu.Lock()
	rec, ok := s.st.Clusters[c.id]
	if !ok || rec.Removing != nil {
		s.mu.Unlock()
		return
	}
	driver := rec.Driver
	rt := s.stats(c.id)
	if driver == "" {
		rt.setCondition(condPending, "Unknown", "", "")
		rt.setCondition(condProvisioned, "Unknown", "", "")
		rt.setCondition(condWaiting, "Unknown", "", "Waiting for API to be available")
		s.mu.Unlock()
		return
	}
	rt.setCondition(condPending, "True", "", "")
	s.mu.Unlock()

	connected := c.pingSteve(ctx)
	c.downstreamPass(ctx, connected)
}

// pingSteve is clusterconnected.go: GET http://not-used/ping through stv-cluster-<id> when that
// session exists; 200 means Connected=True.
func (c *clusterController) pingSteve(ctx context.Context) bool {
	s := c.s
	key := steveTokenPrefix + c.id
	ok, reason := false, "no steve tunnel session"
	if s.tunnel.HasSession(key) {
		transport := &http.Transport{DialContext: s.tunnel.Dialer(key)}
		client := &http.Client{Transport: transport, Timeout: 15 * time.Second}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://not-used/ping", nil)
		if err == nil {
			var resp *http.Response
			resp, err = client.Do(req)
			if err == nil {
				_ = resp.Body.Close()
				ok = resp.StatusCode == http.StatusOK
				reason = "ping answered " + resp.Status
			}
		}
		if err != nil {
			reason = "ping failed: " + err.Error()
		}
		// Like Rancher: a fresh transport per probe, idle connections closed right after.
		transport.CloseIdleConnections()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rt := s.stats(c.id)
	if ok {
		rt.PingsOK++
		rt.setCondition(condConnected, "True", "", "")
	} else {
		rt.PingsFailed++
		rt.setCondition(condConnected, "False", "Disconnected", reason)
		if s.tunnel.HasSession(key) {
			rt.fail("steve /ping: %s", reason)
		}
	}
	return ok
}
