// Command rancher-sim is a test peer that stands in for the parts of Rancher a cattle-cluster-agent
// talks to: the v3 management API subset used to import a cluster, the import manifest, the
// /v3/connect tunnel authorizers on an upstream remotedialer server, and Rancher's own traffic into a
// connected cluster (probes, list/watch, impersonation setup, agent deployment) that decides whether
// the cluster becomes active.
//
//	rancher-sim --state-dir DIR --token token-abcde:secret [--listen 127.0.0.1:0] [--address-file F]
//	            [--probe-interval 15s] [--token-delay 1s] [--rancher-version v2.14.0]
//	            [--agent-tls-mode strict|system-store] [--server-url URL] [--watch-set rancher|minimal]
//	            [--browse-clusters N] [--browse-interval 15s]
//
// The chosen https:// address is printed on stdout and written to DIR/address (and --address-file).
// Clusters, registration tokens, recorded tunnel params and the CA persist in DIR across restarts;
// counters in /sim/clusters/<id>/stats count from the start of the current process.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

type config struct {
	listen        string
	stateDir      string
	addressFile   string
	serverURL     string
	tokens        []string
	probeInterval time.Duration
	tokenDelay    time.Duration
	tokenWait     time.Duration
	version       rancherVersion
	agentTLSMode  string
	watchSet      string
	// browseClusters is how many clusters (the oldest first) the browse loop visits, every
	// browseInterval.
	browseClusters int
	browseInterval time.Duration
	// requestTimeout is the downstream clients' timeout: Rancher's 45 s (rancherRequestTimeout);
	// tests shorten it.
	requestTimeout time.Duration
}

// rancherRequestTimeout is rest.Config.Timeout of Rancher's downstream clients
// (pkg/clustermanager/manager.go ToRESTConfig).
const rancherRequestTimeout = 45 * time.Second

func parseFlags(args []string) (config, error) {
	var cfg config
	var tokens stringList
	var version string
	fs := flag.NewFlagSet("rancher-sim", flag.ContinueOnError)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:0", "address to serve HTTPS on (port 0 picks a free port)")
	fs.StringVar(&cfg.stateDir, "state-dir", "", "directory for the CA, clusters and tokens (required)")
	fs.StringVar(&cfg.addressFile, "address-file", "", "also write the chosen https:// address to this file")
	fs.StringVar(&cfg.serverURL, "server-url", "", "Rancher server-url setting (default: the listen address)")
	fs.Var(&tokens, "token", "accepted API bearer token token-xxxxx:secret (repeatable, at least one)")
	fs.DurationVar(&cfg.probeInterval, "probe-interval", 15*time.Second, "interval of Rancher's per-cluster probes")
	fs.DurationVar(&cfg.tokenDelay, "token-delay", time.Second, "delay before a new registration token's value appears")
	fs.DurationVar(&cfg.tokenWait, "sa-token-wait", 30*time.Second, "how long to wait for data.token of a service-account-token Secret")
	fs.StringVar(&version, "rancher-version", "v2.14.0", "Rancher version whose behaviour to simulate (2.8 or later)")
	fs.StringVar(&cfg.agentTLSMode, "agent-tls-mode", "strict", "agent-tls-mode setting: strict or system-store (drives STRICT_VERIFY)")
	fs.StringVar(&cfg.watchSet, "watch-set", watchSetRancher, "informers held on every connected cluster: rancher (Rancher v2.15's user controllers) or minimal (nodes, namespaces)")
	fs.IntVar(&cfg.browseClusters, "browse-clusters", 0, "browse this many clusters (oldest first) through the steve proxy as Cluster Explorer does")
	fs.DurationVar(&cfg.browseInterval, "browse-interval", 15*time.Second, "interval of the browse loop's rounds")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.tokens = tokens
	cfg.requestTimeout = rancherRequestTimeout
	if cfg.stateDir == "" {
		return cfg, errors.New("--state-dir is required")
	}
	if len(cfg.tokens) == 0 {
		return cfg, errors.New("at least one --token is required")
	}
	for _, t := range cfg.tokens {
		name, secret, ok := strings.Cut(t, ":")
		if !ok || name == "" || secret == "" {
			return cfg, fmt.Errorf("--token must look like token-xxxxx:secret")
		}
	}
	if cfg.probeInterval <= 0 || cfg.tokenDelay < 0 || cfg.tokenWait <= 0 || cfg.browseInterval <= 0 {
		return cfg, errors.New("intervals must be positive")
	}
	if cfg.browseClusters < 0 {
		return cfg, errors.New("--browse-clusters must not be negative")
	}
	if cfg.agentTLSMode != "strict" && cfg.agentTLSMode != "system-store" {
		return cfg, fmt.Errorf("--agent-tls-mode must be strict or system-store, not %q", cfg.agentTLSMode)
	}
	if _, err := watchSetFor(cfg.watchSet); err != nil {
		return cfg, err
	}
	v, err := parseRancherVersion(version)
	if err != nil {
		return cfg, err
	}
	cfg.version = v
	return cfg, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "rancher-sim:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "rancher-sim:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return err
	}
	ca, err := loadOrCreateCA(cfg.stateDir)
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	serving, err := ca.servingCert()
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	st, err := openStore(filepath.Join(cfg.stateDir, "state.json"))
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	address := "https://" + listener.Addr().String()
	if cfg.serverURL == "" {
		cfg.serverURL = address
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	s := newSim(ctx, cfg, st, ca)
	srv := &http.Server{
		Handler:           s.routes(),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{serving}, NextProtos: []string{"http/1.1"}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	for _, f := range []string{filepath.Join(cfg.stateDir, "address"), cfg.addressFile} {
		if f != "" {
			if err := writeFileAtomic(f, []byte(address+"\n")); err != nil {
				return err
			}
		}
	}
	fmt.Printf("rancher-sim listening on %s (Rancher %s)\n", address, cfg.version)
	s.startControllers()

	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(listener, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
		return nil
	}
}

// writeFileAtomic replaces path in one rename so readers never see a partial file.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
