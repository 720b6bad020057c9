//go:build ignore

// A measurement prototype, not part of the product (docs/benchmarks.md, "Collecting less during
// start-up"): kube-apiserver's own command, with Go's GC target raised to $START_GOGC until the
// apiserver answers /readyz = ok, then set back to $GOGC (read by the runtime at start) and the
// freed memory returned at once. It asks whether an apiserver can start at Go's default GC cost
// and still idle at GOGC=15's memory.
//
// Build it against the toolchain's Kubernetes pin, then start it in place of a lean apiserver:
//
//	d=$(mktemp -d); cp tools/k8s/go.mod tools/k8s/go.sum bench/apiserver-gc-switch/main.go "$d"
//	(cd "$d" && CGO_ENABLED=0 go build -trimpath -o kube-apiserver main.go)
//	APISERVER_BIN=$d/kube-apiserver bench/apiserver-standalone.sh CLUSTER_DIR start 40 \
//	  "GOGC=15 GOMAXPROCS=1 START_GOGC=100 READYZ_CERT=CLUSTER_DIR/pki/admin.crt READYZ_KEY=CLUSTER_DIR/pki/admin.key"
//
// The /readyz poll skips certificate verification: it only ever dials its own process on
// loopback, and this program is a benchmark tool, never run by the agent.
package main

import (
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"time"
	_ "time/tzdata" // as kube-apiserver's main: CronJob time zones

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	start, err := strconv.Atoi(os.Getenv("START_GOGC"))
	if err != nil {
		os.Stderr.WriteString("START_GOGC: expected an integer GC percentage\n")
		os.Exit(2)
	}
	idle := debug.SetGCPercent(start)
	command := app.NewAPIServerCommand()
	run := command.RunE
	command.RunE = func(cmd *cobra.Command, args []string) error {
		port := cmd.Flags().Lookup("secure-port").Value.String()
		go func() {
			waitReady(net.JoinHostPort("127.0.0.1", port))
			debug.SetGCPercent(idle)
			debug.FreeOSMemory()
		}()
		return run(cmd, args)
	}
	os.Exit(cli.Run(command))
}

// waitReady polls https://addr/readyz as the cluster's admin until it answers 200.
func waitReady(addr string) {
	cert, err := tls.LoadX509KeyPair(os.Getenv("READYZ_CERT"), os.Getenv("READYZ_KEY"))
	if err != nil {
		os.Stderr.WriteString("READYZ_CERT/READYZ_KEY: " + err.Error() + "\n")
		os.Exit(2)
	}
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}}}}
	for {
		if resp, err := client.Get("https://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}
