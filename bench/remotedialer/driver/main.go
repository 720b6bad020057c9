// Command driver runs the remotedialer benchmark: for each client implementation it starts
// a fresh upstream server program, runs the client with N sessions, and measures
//
//   - memory per idle session: (RSS with N idle sessions - RSS before connecting) / N
//   - throughput of one large GET streamed from a local target through the tunnel
//   - p50/p99 latency of small GETs through the tunnel (one new stream each)
//
// and prints a Markdown table with ours/Go ratios.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

type result struct {
	name          string
	kibPerSession float64
	mibPerSec     float64
	p50, p99      time.Duration
}

func main() {
	server := flag.String("server", "", "upstream server binary")
	rustClient := flag.String("rust-client", "", "our client binary")
	goClient := flag.String("go-client", "", "upstream Go client binary")
	sessions := flag.Int("sessions", 1000, "idle sessions per client")
	transfer := flag.Int64("transfer-mib", 256, "size of the throughput transfer (MiB)")
	requests := flag.Int("requests", 2000, "small GETs for the latency figures")
	settle := flag.Duration("settle", 5*time.Second, "idle time before sampling RSS")
	flag.Parse()

	target := startTarget()
	fmt.Printf("target %s, %d sessions, %d MiB transfer, %d small GETs\n\n", target, *sessions, *transfer, *requests)
	var results []result
	for _, client := range []struct{ name, binary string }{{"rust (ours)", *rustClient}, {"go (upstream)", *goClient}} {
		results = append(results, run(client.name, client.binary, *server, target, *sessions, *transfer<<20, *requests, *settle))
	}
	ours, theirs := results[0], results[1]
	fmt.Println("| client | memory per idle session | throughput | p50 latency | p99 latency |")
	fmt.Println("|---|---|---|---|---|")
	for _, r := range results {
		fmt.Printf("| %s | %.1f KiB | %.0f MiB/s | %s | %s |\n", r.name, r.kibPerSession, r.mibPerSec, r.p50, r.p99)
	}
	fmt.Printf("| ours/Go | %.2f | %.2f | %.2f | %.2f |\n",
		ours.kibPerSession/theirs.kibPerSession, ours.mibPerSec/theirs.mibPerSec,
		float64(ours.p50)/float64(theirs.p50), float64(ours.p99)/float64(theirs.p99))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "driver: "+format+"\n", args...)
	os.Exit(1)
}

func freePort() int {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("free port: %v", err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port
}

// startTarget serves /bytes/N (N pattern bytes) and /small ("ok", new connection each time).
func startTarget() string {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail("target: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes/{n}", func(rw http.ResponseWriter, req *http.Request) {
		n, _ := strconv.ParseInt(req.PathValue("n"), 10, 64)
		rw.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		block := pattern(0, 32<<10)
		for sent := int64(0); sent < n; sent += int64(len(block)) {
			chunk := block[:min(int64(len(block)), n-sent)]
			if _, err := rw.Write(chunk); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/small", func(rw http.ResponseWriter, req *http.Request) {
		rw.Header().Set("Connection", "close")
		io.WriteString(rw, "ok")
	})
	go http.Serve(listener, mux)
	return listener.Addr().String()
}

func pattern(offset, n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = byte((offset + i) * 31)
	}
	return out
}

func rssKiB(pid int) float64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fail("read rss: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			fields := strings.Fields(line)
			kib, _ := strconv.ParseFloat(fields[1], 64)
			return kib
		}
	}
	fail("no VmRSS for %d", pid)
	return 0
}

func waitLine(lines *bufio.Scanner, want string) {
	for lines.Scan() {
		if strings.TrimSpace(lines.Text()) == want {
			return
		}
	}
	fail("client exited before printing %q", want)
}

func run(name, clientBinary, serverBinary, target string, sessions int, transfer int64, requests int, settle time.Duration) result {
	port := freePort()
	server := exec.Command(serverBinary, "-listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err := server.Start(); err != nil {
		fail("start server: %v", err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			fail("server did not listen")
		}
	}

	client := exec.Command(clientBinary, "--url", fmt.Sprintf("ws://127.0.0.1:%d/connect", port),
		"--sessions", strconv.Itoa(sessions), "--prefix", "bench-")
	// Go's flag package accepts --name too, so both clients share this command line.
	stdin, _ := client.StdinPipe()
	stdout, _ := client.StdoutPipe()
	client.Stderr = os.Stderr
	if err := client.Start(); err != nil {
		fail("start %s: %v", name, err)
	}
	defer func() { stdin.Close(); client.Wait() }()
	lines := bufio.NewScanner(stdout)
	waitLine(lines, "baseline")
	before := rssKiB(client.Process.Pid)
	started := time.Now()
	io.WriteString(stdin, "go\n")
	waitLine(lines, "ready")
	connectTime := time.Since(started)
	time.Sleep(settle)
	after := rssKiB(client.Process.Pid)
	fmt.Printf("%s: %d sessions connected in %s, RSS %.0f KiB -> %.0f KiB\n", name, sessions, connectTime.Round(time.Millisecond), before, after)

	http := &http.Client{Timeout: 10 * time.Minute}
	url := func(path string) string {
		return fmt.Sprintf("%s/client/bench-0/http/%s/%s?timeout=600", base, target, path)
	}
	get := func(path string) []byte {
		resp, err := http.Get(url(path))
		if err != nil {
			fail("%s GET %s: %v", name, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			fail("%s GET %s: status %d, %v", name, path, resp.StatusCode, err)
		}
		return body
	}
	get("small") // warm up the server's per-client transport

	transferStart := time.Now()
	resp, err := http.Get(url(fmt.Sprintf("bytes/%d", transfer)))
	if err != nil {
		fail("%s transfer: %v", name, err)
	}
	hash := sha256.New()
	received, err := io.Copy(hash, resp.Body)
	resp.Body.Close()
	elapsed := time.Since(transferStart)
	if err != nil || received != transfer {
		fail("%s transfer: %d of %d bytes, %v", name, received, transfer, err)
	}
	want := sha256.New()
	block := pattern(0, 32<<10)
	for sent := int64(0); sent < transfer; sent += int64(len(block)) {
		want.Write(block[:min(int64(len(block)), transfer-sent)])
	}
	if hex.EncodeToString(hash.Sum(nil)) != hex.EncodeToString(want.Sum(nil)) {
		fail("%s transfer: checksum mismatch", name)
	}
	mibPerSec := float64(transfer) / (1 << 20) / elapsed.Seconds()
	fmt.Printf("%s: %d MiB in %s\n", name, transfer>>20, elapsed.Round(time.Millisecond))

	latencies := make([]time.Duration, 0, requests)
	for i := 0; i < requests; i++ {
		start := time.Now()
		if body := get("small"); string(body) != "ok" {
			fail("%s small GET answered %q", name, body)
		}
		latencies = append(latencies, time.Since(start))
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	percentile := func(p float64) time.Duration {
		return latencies[int(p*float64(len(latencies)-1))].Round(time.Microsecond)
	}
	return result{
		name:          name,
		kibPerSession: (after - before) / float64(sessions),
		mibPerSec:     mibPerSec,
		p50:           percentile(0.50),
		p99:           percentile(0.99),
	}
}
