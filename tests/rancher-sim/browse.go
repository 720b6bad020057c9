package main

// The browse loop (--browse-clusters N --browse-interval 15s): what a user with Cluster Explorer
// open on a cluster makes Rancher send to it, every interval, through the steve proxy: the schemas,
// the resource counts, and the node and pod lists page by page (?limit=, then ?continue=).
// Latencies and errors land in the cluster's stats (browse) and in /sim/stats.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sort"
	"time"
)

const (
	// browsePageSize is the page size of the node and pod lists.
	browsePageSize = 100
	// browseSamples bounds the latencies kept per cluster for the percentiles (the newest win).
	browseSamples = 1024
	// browseMaxPages bounds one list, so a server that keeps answering "continue" cannot hold a
	// round forever.
	browseMaxPages = 1000
)

// browseStats is one cluster's browse record since this process started.
type browseStats struct {
	Rounds    int
	Requests  int
	Errors    int
	LastError string
	// samples is a ring of the latest request latencies, in milliseconds.
	samples []float64
	next    int
}

func (b *browseStats) record(latency time.Duration, err error) {
	b.Requests++
	if err != nil {
		b.Errors++
		b.LastError = err.Error()
	}
	if latency <= 0 {
		// Failed before anything was sent: an error, not a latency.
		return
	}
	ms := float64(latency.Microseconds()) / 1000
	if len(b.samples) < browseSamples {
		b.samples = append(b.samples, ms)
		return
	}
	b.samples[b.next] = ms
	b.next = (b.next + 1) % browseSamples
}

// browseSummary is how browse figures are shown: counts and latency percentiles in ms.
type browseSummary struct {
	Rounds    int     `json:"rounds"`
	Requests  int     `json:"requests"`
	Errors    int     `json:"errors"`
	P50Ms     float64 `json:"p50Ms"`
	P99Ms     float64 `json:"p99Ms"`
	LastError string  `json:"lastError,omitempty"`
}

func summarize(stats []*browseStats) browseSummary {
	var out browseSummary
	var all []float64
	for _, b := range stats {
		out.Rounds += b.Rounds
		out.Requests += b.Requests
		out.Errors += b.Errors
		if b.LastError != "" {
			out.LastError = b.LastError
		}
		all = append(all, b.samples...)
	}
	out.P50Ms, out.P99Ms = percentile(all, 0.50), percentile(all, 0.99)
	return out
}

// percentile is the nearest-rank percentile of the samples (0 without samples).
func percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 {
		return 0
	}
	sorted := append([]float64(nil), samples...)
	sort.Float64s(sorted)
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func (b *browseStats) MarshalJSON() ([]byte, error) {
	return json.Marshal(summarize([]*browseStats{b}))
}

// browsed reports whether the cluster is one of the first --browse-clusters clusters by creation
// time. Callers hold s.mu.
func (s *sim) browsed(id string) bool {
	if s.cfg.browseClusters <= 0 {
		return false
	}
	for i, rec := range s.sortedClusters() {
		if i >= s.cfg.browseClusters {
			return false
		}
		if rec.ID == id {
			return true
		}
	}
	return false
}

// browseLoop runs browse rounds for the cluster while it is among the browsed ones and its steve
// tunnel is up.
func (c *clusterController) browseLoop(ctx context.Context) {
	ticker := time.NewTicker(c.s.cfg.browseInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		s := c.s
		s.mu.Lock()
		selected := s.browsed(c.id)
		s.mu.Unlock()
		if selected && s.tunnel.HasSession(steveTokenPrefix+c.id) {
			c.browseRound(ctx)
		}
	}
}

// browseRound is one visit of Cluster Explorer's cluster dashboard as the admin.
func (c *clusterController) browseRound(ctx context.Context) {
	s := c.s
	client, err := s.steveClient(c.id, newRancherUser(adminUser, "admin", nil, "", ""))
	if err != nil {
		c.browseRecord(0, err)
		return
	}
	defer client.CloseIdleConnections()
	for _, path := range []string{"/v1/schemas", "/v1/counts"} {
		if _, err := c.browseGet(ctx, client, path, nil); err != nil {
			break
		}
	}
	for _, kind := range []string{"nodes", "pods"} {
		q := url.Values{"limit": {fmt.Sprint(browsePageSize)}}
		for page := 0; page < browseMaxPages; page++ {
			body, err := c.browseGet(ctx, client, "/v1/"+kind, q)
			if err != nil {
				break
			}
			var list struct {
				Continue string `json:"continue"`
			}
			if err := json.Unmarshal(body, &list); err != nil {
				c.browseRecord(0, fmt.Errorf("/v1/%s: %w", kind, err))
				break
			}
			if list.Continue == "" {
				break
			}
			q.Set("continue", list.Continue)
		}
	}
	s.mu.Lock()
	s.stats(c.id).browse().Rounds++
	s.mu.Unlock()
}

// browseGet is one request; its latency and outcome are recorded.
func (c *clusterController) browseGet(ctx context.Context, client *http.Client, path string, q url.Values) ([]byte, error) {
	u := "http://" + c.id + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		c.browseRecord(0, err)
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	start := time.Now()
	resp, err := client.Do(req)
	var body []byte
	if err == nil {
		body, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		_ = resp.Body.Close()
		if err == nil && resp.StatusCode/100 != 2 {
			err = fmt.Errorf("GET %s: %s", path, resp.Status)
		}
	}
	c.browseRecord(time.Since(start), err)
	return body, err
}

func (c *clusterController) browseRecord(latency time.Duration, err error) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats(c.id).browse().record(latency, err)
}

// browse returns the cluster's browse record, creating it. Callers hold s.mu.
func (rt *runtimeStats) browse() *browseStats {
	if rt.Browse == nil {
		rt.Browse = &browseStats{}
	}
	return rt.Browse
}
