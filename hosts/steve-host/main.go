// Command steve-host serves Rancher's Steve API (github.com/rancher/steve, the version Rancher
// pins) for every simulated cluster of one scale-cluster-agent, as the embedded Steve of a real
// cattle-cluster-agent serves it for its own cluster.
//
// It is thin wiring only. The agent forwards each request arriving on a cluster's steve tunnel to
// the unix socket given by --socket, naming the cluster in the X-Scale-Cluster header (the agent
// drops any such header Rancher sends; the socket lives in a directory only the agent's user can
// enter, so nobody else can set it). The host loads <clusters-dir>/<name>/kubeconfig.yaml,
// creates that cluster's Steve server on its first request and releases it once it has served
// nothing for --idle-timeout, so clusters nobody browses cost nothing.
//
// Users are authenticated from the Impersonate-User, Impersonate-Group and Impersonate-Extra-*
// headers Rancher's steve proxy sets, exactly as the real agent's embedded Rancher does it
// (header authentication, no admin fallback): Steve then applies that user's RBAC in the
// downstream cluster. Logs go to stderr and never contain a header value or a credential.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// version is stamped by the agent's toolchain build (-X main.version=...): the Steve pin plus a
// hash of these sources, which `--version` reports and the toolchain checks.
var version = "dev"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	socket := flag.String("socket", "", "unix socket to serve on (its directory should be private to this user)")
	// The agent passes the clusters directory in the environment, not on the command line: tools
	// (and the agent's tests) that find a cluster's processes by a path on their command line
	// must not take the host for one of them.
	clustersDir := flag.String("clusters-dir", os.Getenv("STEVE_HOST_CLUSTERS_DIR"),
		"kwokctl's clusters directory: <dir>/<name>/kubeconfig.yaml (default $STEVE_HOST_CLUSTERS_DIR)")
	idle := flag.Duration("idle-timeout", 10*time.Minute, "release a cluster's Steve server after this long without requests")
	ready := flag.Duration("ready-timeout", 60*time.Second, "longest wait for a new Steve server's first schemas")
	verbose := flag.Bool("verbose", false, "log Steve's informational messages too")
	flag.Parse()
	if *showVersion {
		fmt.Printf("steve-host version %s\n", version)
		return
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(logger)
	// Steve and wrangler log every informer they start at info level: noise at hundreds of
	// clusters. Warnings and errors still show.
	logrus.SetOutput(os.Stderr)
	if !*verbose {
		logrus.SetLevel(logrus.WarnLevel)
	}

	if err := run(*socket, *clustersDir, *idle, *ready); err != nil {
		slog.Error("steve-host failed", "error", err)
		os.Exit(1)
	}
}

func run(socket, clustersDir string, idle, ready time.Duration) error {
	if socket == "" || clustersDir == "" {
		return errors.New("--socket and --clusters-dir are required")
	}
	if idle <= 0 || ready <= 0 {
		return errors.New("--idle-timeout and --ready-timeout must be positive")
	}
	listener, err := listenUnix(socket)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	hosts := newHosts(ctx, clustersDir, idle, ready, newSteveServer)
	go hosts.reapIdle(ctx)

	server := &http.Server{
		Handler: hosts,
		// Bounds a client that never finishes its headers; bodies and watches are unbounded, as
		// in Steve itself.
		ReadHeaderTimeout: 30 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	slog.Info("steve-host serving", "socket", socket, "clustersDir", clustersDir, "idleTimeout", idle)

	select {
	case err := <-served:
		hosts.releaseAll()
		return fmt.Errorf("serving on %s: %w", socket, err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Hijacked websockets are not waited for; releasing the servers ends their watches.
	_ = server.Shutdown(shutdown)
	hosts.releaseAll()
	_ = os.Remove(socket)
	slog.Info("steve-host stopped")
	return nil
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
	// The umask makes the socket 0600 from the start, with no window before a chmod.
	old := syscall.Umask(0o177)
	listener, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return listener, nil
}
