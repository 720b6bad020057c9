// Command goclient is the Go side of the remotedialer benchmark: N sessions of the upstream
// client (remotedialer.ClientConnect) in one process, the way the real agent uses it.
//
// It prints "baseline", waits for a line on stdin (the driver samples RSS in between),
// connects, prints "ready" once all N sessions are connected, and exits when stdin closes.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/rancher/remotedialer"
	"github.com/sirupsen/logrus"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8123/connect", "tunnel url")
	sessions := flag.Int("sessions", 1000, "number of sessions")
	prefix := flag.String("prefix", "bench-", "x-tunnel-id prefix")
	flag.Parse()
	logrus.SetLevel(logrus.WarnLevel)

	fmt.Println("baseline")
	stdin := bufio.NewReader(os.Stdin)
	stdin.ReadString('\n')
	var connected atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	allowAll := func(string, string) bool { return true }
	for i := 0; i < *sessions; i++ {
		headers := http.Header{"X-Tunnel-Id": {fmt.Sprintf("%s%d", *prefix, i)}}
		go func() {
			for ctx.Err() == nil {
				remotedialer.ClientConnect(ctx, *url, headers, nil, allowAll, func(context.Context, *remotedialer.Session) error {
					connected.Add(1)
					return nil
				})
			}
		}()
	}
	for connected.Load() < int64(*sessions) {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, stdin)
	cancel()
}
