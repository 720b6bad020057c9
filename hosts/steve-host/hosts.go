package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"sync"
	"time"
)

// ClusterHeader names the cluster a request is for. Only the agent sets it: it removes any such
// header arriving from Rancher, and nobody else can reach the socket.
const ClusterHeader = "X-Scale-Cluster"

// dnsLabel is an RFC 1123 label, which every simulated cluster name is; anything else (a path, a
// dot, an upper-case letter) is refused before it touches the file system.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// errNoCluster means the cluster has no kubeconfig: it does not exist (any more) on this host.
var errNoCluster = errors.New("no such simulated cluster")

// builder makes one cluster's Steve handler from its kubeconfig; the handler lives until ctx
// ends, and release (called after that) lets go of what ctx alone does not. A parameter so the
// package's tests can count builds without an apiserver.
type builder func(ctx context.Context, kubeconfig string, ready time.Duration) (handler http.Handler, release func(), err error)

// hosts serves every cluster, each from its own Steve server built on first use.
type hosts struct {
	ctx         context.Context
	clustersDir string
	idle        time.Duration
	ready       time.Duration
	build       builder

	mu      sync.Mutex
	running map[string]*entry
}

// entry is one cluster's Steve server, being built until ready is closed.
type entry struct {
	ready   chan struct{}
	handler http.Handler // set before ready is closed, nil on failure
	release func()       // set with handler
	err     error        // set before ready is closed on failure
	cancel  context.CancelFunc
	// Guarded by hosts.mu.
	inflight int
	lastUsed time.Time
}

func newHosts(ctx context.Context, clustersDir string, idle, ready time.Duration, build builder) *hosts {
	return &hosts{
		ctx:         ctx,
		clustersDir: clustersDir,
		idle:        idle,
		ready:       ready,
		build:       build,
		running:     map[string]*entry{},
	}
}

func (h *hosts) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	// Rancher's Connected probe is answered by the agent itself; answering it here too lets the
	// agent (and a human with curl) check the host without naming a cluster.
	if req.URL.Path == "/ping" {
		rw.Header().Set("Content-Type", "text/plain")
		_, _ = rw.Write([]byte("pong"))
		return
	}
	// What the host holds, for benchmarks and leak checks; reachable only through the private
	// socket, and it names no cluster.
	if req.URL.Path == "/debug/stats" && req.Header.Get(ClusterHeader) == "" {
		var mem runtime.MemStats
		runtime.ReadMemStats(&mem)
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(map[string]uint64{
			"clusters":     uint64(h.count()),
			"goroutines":   uint64(runtime.NumGoroutine()),
			"heapInuse":    mem.HeapInuse,
			"heapReleased": mem.HeapReleased,
			"sys":          mem.Sys,
		})
		return
	}
	name := req.Header.Get(ClusterHeader)
	if name == "" {
		http.Error(rw, "steve-host: missing "+ClusterHeader+" header", http.StatusBadRequest)
		return
	}
	if !dnsLabel.MatchString(name) {
		http.Error(rw, "steve-host: invalid cluster name in "+ClusterHeader+" (expected an RFC 1123 label)", http.StatusBadRequest)
		return
	}
	req.Header.Del(ClusterHeader)

	e := h.acquire(name)
	defer h.releaseUse(e)
	select {
	case <-e.ready:
	case <-req.Context().Done():
		return
	}
	if e.err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(e.err, errNoCluster) {
			status = http.StatusNotFound
		}
		http.Error(rw, fmt.Sprintf("steve-host: cluster %s: %v", name, e.err), status)
		return
	}
	e.handler.ServeHTTP(rw, req)
}

// acquire returns the cluster's entry, starting its Steve server if none runs, and counts the
// request as in flight so the entry is not released under it.
func (h *hosts) acquire(name string) *entry {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.running[name]
	if !ok {
		ctx, cancel := context.WithCancel(h.ctx)
		e = &entry{ready: make(chan struct{}), cancel: cancel}
		h.running[name] = e
		go h.start(ctx, name, e)
	}
	e.inflight++
	e.lastUsed = time.Now()
	return e
}

func (h *hosts) releaseUse(e *entry) {
	h.mu.Lock()
	defer h.mu.Unlock()
	e.inflight--
	e.lastUsed = time.Now()
}

// start builds the cluster's Steve server. A failure is answered to the requests waiting now and
// forgotten, so the next request tries again (the cluster may be starting).
func (h *hosts) start(ctx context.Context, name string, e *entry) {
	begun := time.Now()
	kubeconfig := filepath.Join(h.clustersDir, name, "kubeconfig.yaml")
	handler, release, err := h.buildFrom(ctx, kubeconfig)
	if err != nil {
		e.err = err
		e.cancel()
		h.mu.Lock()
		if h.running[name] == e {
			delete(h.running, name)
		}
		h.mu.Unlock()
		slog.Warn("cannot start Steve for cluster", "cluster", name, "error", err)
	} else {
		e.handler, e.release = handler, release
		slog.Info("Steve started for cluster", "cluster", name, "took", time.Since(begun).Round(time.Millisecond))
	}
	close(e.ready)
}

func (h *hosts) buildFrom(ctx context.Context, kubeconfig string) (http.Handler, func(), error) {
	if _, err := os.Stat(kubeconfig); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, errNoCluster
	} else if err != nil {
		return nil, nil, fmt.Errorf("reading its kubeconfig: %w", err)
	}
	return h.build(ctx, kubeconfig, h.ready)
}

// reapIdle releases every Steve server that has served nothing for the idle timeout.
func (h *hosts) reapIdle(ctx context.Context) {
	tick := h.idle / 4
	if tick < 100*time.Millisecond {
		tick = 100 * time.Millisecond
	}
	if tick > 30*time.Second {
		tick = 30 * time.Second
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			h.releaseIdle(time.Now())
		}
	}
}

func (h *hosts) releaseIdle(now time.Time) {
	var released []string
	h.mu.Lock()
	for name, e := range h.running {
		if e.inflight == 0 && now.Sub(e.lastUsed) >= h.idle {
			stop(e)
			delete(h.running, name)
			released = append(released, name)
		}
	}
	h.mu.Unlock()
	for _, name := range released {
		slog.Info("Steve released for idle cluster", "cluster", name)
	}
	if len(released) > 0 {
		// Cancelling stops the server's informers and watches within moments; handing the freed
		// heap back to the kernel then (rather than whenever the scavenger gets to it) is what
		// makes an idle cluster cost nothing.
		time.AfterFunc(2*time.Second, debug.FreeOSMemory)
	}
}

func (h *hosts) releaseAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, e := range h.running {
		stop(e)
		delete(h.running, name)
	}
}

// stop cancels an entry's server and, once it is built, releases it; an entry still being
// built is released by nobody but its context, which ends its build.
func stop(e *entry) {
	e.cancel()
	select {
	case <-e.ready:
		if e.release != nil {
			go e.release()
		}
	default:
	}
}

// count is the number of clusters with a Steve server (built or being built).
func (h *hosts) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.running)
}
