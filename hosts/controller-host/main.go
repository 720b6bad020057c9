// Command controller-host runs, for every simulated cluster of one scale-cluster-agent, the
// controllers a cluster's kube-controller-manager and kwok-controller processes would run:
// kube-controller-manager's (k8s.io/kubernetes, the version the toolchain builds), restricted to
// --controllers, and kwok's node, lease, pod and stage controllers (sigs.k8s.io/kwok), so that
// one process replaces two per cluster.
//
// It is thin wiring only. The agent adds and removes clusters at run time through a small HTTP
// API on the unix socket given by --socket (its directory is private to the agent's user):
//
//	PUT    /clusters/<name>   start the cluster's controllers (idempotent)
//	DELETE /clusters/<name>   stop them and wait for their goroutines to end
//	GET    /clusters          every cluster's controllers: running, restarts, last error
//	GET    /ping, /debug/stats
//	GET    /debug/pprof/<profile>   Go's profiles (heap, goroutine, ...; profile = CPU, ?seconds=N)
//
// A cluster's files are those kwokctl gives its kcm and kwok-controller, read from
// <clusters-dir>/<name>/: kubeconfig.yaml, pki/ca.crt, pki/admin.key and kwok.yaml. Each
// cluster's controllers run under their own context and are retried with a backoff when they
// fail (bad kubeconfig, apiserver down), so one cluster's failure stays in that cluster. Logs go
// to stderr and never contain a credential.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	restclient "k8s.io/client-go/rest"
	"k8s.io/klog/v2"
)

// version is stamped by the agent's toolchain build (-X main.version=...): the Kubernetes pin
// plus a hash of these sources, which `--version` reports and the toolchain checks.
var version = "dev"

// verboseLogs is --verbose: the controllers' informational messages are logged too.
var verboseLogs bool

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	socket := flag.String("socket", "", "unix socket to serve the control API on (its directory should be private to this user)")
	// In the environment, not on the command line: tools that find a cluster's processes by a
	// path on their command line must not take the host for one of them.
	clustersDir := flag.String("clusters-dir", os.Getenv("CONTROLLER_HOST_CLUSTERS_DIR"),
		"kwokctl's clusters directory: <dir>/<name>/{kubeconfig.yaml,pki,kwok.yaml} (default $CONTROLLER_HOST_CLUSTERS_DIR)")
	controllers := flag.String("controllers", "", "comma-separated kube-controller-manager controllers to run per cluster (as kcm's --controllers)")
	verbose := flag.Bool("verbose", false, "log the controllers' informational messages too")
	flag.Parse()
	if *showVersion {
		fmt.Printf("controller-host version %s\n", version)
		return
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	verboseLogs = *verbose
	setUpLogging(*verbose)
	// kcm's command does this before running: it watches deprecated APIs on purpose.
	restclient.SetDefaultWarningHandler(restclient.NoWarnings{})

	if err := run(*socket, *clustersDir, splitList(*controllers)); err != nil {
		slog.Error("controller-host failed", "error", err)
		os.Exit(1)
	}
}

// setUpLogging configures klog (kcm's controllers log through it; its flags are process-global,
// so they are set once here, not per cluster): errors and warnings only unless verbose, as
// N clusters' informational messages would drown everything else.
func setUpLogging(verbose bool) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	if verbose {
		_ = fs.Set("logtostderr", "true")
		_ = fs.Set("v", "2")
		return
	}
	// Warnings and errors go to stderr; info lines (every controller's start and cache sync,
	// per cluster) go to klog's "file" output, which is discarded.
	_ = fs.Set("logtostderr", "false")
	_ = fs.Set("stderrthreshold", "WARNING")
	klog.SetOutput(io.Discard)
}

func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func run(socket, clustersDir string, controllers []string) error {
	if socket == "" || clustersDir == "" {
		return errors.New("--socket and --clusters-dir are required")
	}
	if len(controllers) == 0 {
		return errors.New("--controllers is required")
	}
	listener, err := listenUnix(socket)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	cs := newClusters(ctx, clusterParts(clustersDir, controllers)...)
	server := &http.Server{Handler: newAPI(cs, clustersDir), ReadHeaderTimeout: 30 * time.Second}
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	slog.Info("controller-host serving", "socket", socket, "clustersDir", clustersDir, "controllers", controllers)

	select {
	case err := <-served:
		cs.removeAll()
		return fmt.Errorf("serving on %s: %w", socket, err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = server.Shutdown(shutdown)
	cs.removeAll()
	_ = os.Remove(socket)
	slog.Info("controller-host stopped")
	return nil
}

// clusterParts is what runs per cluster: kcm's controllers and kwok's, from the files kwokctl
// gives the two processes they replace.
func clusterParts(clustersDir string, controllers []string) []part {
	return []part{
		{name: "kube-controller-manager", run: func(ctx context.Context, name string) error {
			dir := filepath.Join(clustersDir, name)
			return runKCM(ctx, kcmSettings{
				cluster:     name,
				kubeconfig:  filepath.Join(dir, "kubeconfig.yaml"),
				rootCAFile:  filepath.Join(dir, "pki", "ca.crt"),
				saKeyFile:   filepath.Join(dir, "pki", "admin.key"),
				controllers: controllers,
			})
		}},
		{name: "kwok-controller", run: func(ctx context.Context, name string) error {
			dir := filepath.Join(clustersDir, name)
			return runKwok(ctx, kwokSettings{
				cluster:    name,
				kubeconfig: filepath.Join(dir, "kubeconfig.yaml"),
				configPath: filepath.Join(dir, "kwok.yaml"),
			})
		}},
	}
}

// api is the control API.
type api struct {
	clusters    *clusters
	clustersDir string
}

func newAPI(cs *clusters, clustersDir string) http.Handler {
	a := &api{clusters: cs, clustersDir: clustersDir}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("pong")) })
	mux.HandleFunc("GET /debug/stats", a.stats)
	// Where the host's memory and CPU go per cluster (docs/benchmarks.md); the socket is the
	// agent's alone, as for the rest of this API.
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/{profile}", func(rw http.ResponseWriter, req *http.Request) {
		pprof.Handler(req.PathValue("profile")).ServeHTTP(rw, req)
	})
	mux.HandleFunc("GET /clusters", a.list)
	mux.HandleFunc("PUT /clusters/{name}", a.add)
	mux.HandleFunc("DELETE /clusters/{name}", a.remove)
	return mux
}

func (a *api) add(rw http.ResponseWriter, req *http.Request) {
	name := req.PathValue("name")
	if !dnsLabel.MatchString(name) {
		http.Error(rw, "controller-host: invalid cluster name (expected an RFC 1123 label)", http.StatusBadRequest)
		return
	}
	if _, err := os.Stat(filepath.Join(a.clustersDir, name, "kubeconfig.yaml")); errors.Is(err, fs.ErrNotExist) {
		http.Error(rw, fmt.Sprintf("controller-host: cluster %s has no kubeconfig in %s", name, a.clustersDir), http.StatusNotFound)
		return
	} else if err != nil {
		http.Error(rw, fmt.Sprintf("controller-host: cluster %s: %v", name, err), http.StatusInternalServerError)
		return
	}
	if a.clusters.add(name) {
		rw.WriteHeader(http.StatusCreated)
		return
	}
	rw.WriteHeader(http.StatusNoContent)
}

func (a *api) remove(rw http.ResponseWriter, req *http.Request) {
	name := req.PathValue("name")
	if !dnsLabel.MatchString(name) {
		http.Error(rw, "controller-host: invalid cluster name (expected an RFC 1123 label)", http.StatusBadRequest)
		return
	}
	if _, err := a.clusters.remove(name); err != nil {
		http.Error(rw, fmt.Sprintf("controller-host: cluster %s: %v", name, err), http.StatusInternalServerError)
		return
	}
	// Freed informer caches go back to the kernel now rather than whenever the scavenger runs.
	time.AfterFunc(2*time.Second, debug.FreeOSMemory)
	rw.WriteHeader(http.StatusNoContent)
}

func (a *api) list(rw http.ResponseWriter, _ *http.Request) {
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(a.clusters.states())
}

// stats is what the host holds, for benchmarks and leak checks.
func (a *api) stats(rw http.ResponseWriter, _ *http.Request) {
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(map[string]uint64{
		"clusters":     uint64(len(a.clusters.names())),
		"goroutines":   uint64(runtime.NumGoroutine()),
		"heapInuse":    mem.HeapInuse,
		"heapReleased": mem.HeapReleased,
		"sys":          mem.Sys,
	})
}

// listenUnix listens on path, replacing a stale socket a crashed host left behind (never any
// other kind of file), with mode 0600 so only this user can connect.
func listenUnix(path string) (net.Listener, error) {
	if info, err := os.Lstat(path); err == nil {
		if info.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	}
	old := syscall.Umask(0o177)
	listener, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return listener, nil
}
