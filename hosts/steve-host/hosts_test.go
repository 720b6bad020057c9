package main

// The cluster registry alone, with a fake builder standing in for Steve (which needs a real
// apiserver; the Rust test tests/steve_tunnel.rs runs the real thing end to end).

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func fakeClusters(t *testing.T, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range names {
		if err := os.MkdirAll(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "kubeconfig.yaml"), []byte("fake"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// echoBuilder counts builds; its handler answers with the kubeconfig it was built for and the
// cluster header it saw (which must be gone).
func echoBuilder(builds *atomic.Int32) builder {
	return func(ctx context.Context, kubeconfig string, _ time.Duration) (http.Handler, func(), error) {
		builds.Add(1)
		return http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
			_, _ = io.WriteString(rw, filepath.Base(filepath.Dir(kubeconfig))+"|"+req.Header.Get(ClusterHeader))
		}), func() {}, nil
	}
}

func get(t *testing.T, h http.Handler, cluster string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/v1/nodes", nil)
	if cluster != "" {
		req.Header.Set(ClusterHeader, cluster)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestServersAreBuiltOncePerClusterAndReleasedWhenIdle(t *testing.T) {
	var builds atomic.Int32
	h := newHosts(context.Background(), fakeClusters(t, "one", "two"), time.Minute, time.Second, echoBuilder(&builds))

	for i := 0; i < 3; i++ {
		if code, body := get(t, h, "one"); code != 200 || body != "one|" {
			t.Fatalf("one: %d %q", code, body)
		}
	}
	if code, body := get(t, h, "two"); code != 200 || body != "two|" {
		t.Fatalf("two: %d %q", code, body)
	}
	if builds.Load() != 2 || h.count() != 2 {
		t.Fatalf("builds %d, running %d; want 2, 2", builds.Load(), h.count())
	}

	h.releaseIdle(time.Now().Add(30 * time.Second))
	if h.count() != 2 {
		t.Fatalf("released before the idle timeout")
	}
	h.releaseIdle(time.Now().Add(2 * time.Minute))
	if h.count() != 0 {
		t.Fatalf("%d servers still running after the idle timeout", h.count())
	}
	get(t, h, "one")
	if builds.Load() != 3 {
		t.Fatalf("a released cluster is built again on its next request; builds %d", builds.Load())
	}
}

func TestARequestInFlightKeepsItsServer(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	h := newHosts(context.Background(), fakeClusters(t, "watched"), time.Millisecond, time.Second,
		func(ctx context.Context, _ string, _ time.Duration) (http.Handler, func(), error) {
			return http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
				close(started)
				<-release
			}), func() {}, nil
		})
	done := make(chan struct{})
	go func() { get(t, h, "watched"); close(done) }()
	<-started
	h.releaseIdle(time.Now().Add(time.Hour))
	if h.count() != 1 {
		t.Fatal("a server with a request in flight (a watch) was released")
	}
	close(release)
	<-done
	h.releaseIdle(time.Now().Add(time.Hour))
	if h.count() != 0 {
		t.Fatal("not released once idle")
	}
}

func TestBadRequestsAreRefusedClearly(t *testing.T) {
	var builds atomic.Int32
	h := newHosts(context.Background(), fakeClusters(t, "real"), time.Minute, time.Second, echoBuilder(&builds))
	for _, tc := range []struct {
		cluster string
		code    int
	}{
		{"", http.StatusBadRequest},
		{"../real", http.StatusBadRequest},
		{"Real", http.StatusBadRequest},
		{"real.x", http.StatusBadRequest},
		{"-real", http.StatusBadRequest},
		{"missing", http.StatusNotFound},
	} {
		if code, body := get(t, h, tc.cluster); code != tc.code {
			t.Errorf("cluster %q: got %d %q, want %d", tc.cluster, code, body, tc.code)
		}
	}
	if builds.Load() != 0 || h.count() != 0 {
		t.Fatalf("nothing may be built for bad requests: builds %d, running %d", builds.Load(), h.count())
	}

	req := httptest.NewRequest(http.MethodGet, "/ping", nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || rec.Body.String() != "pong" {
		t.Fatalf("/ping: %d %q", rec.Code, rec.Body.String())
	}
}

func TestAFailedStartIsRetriedOnTheNextRequest(t *testing.T) {
	var attempts atomic.Int32
	h := newHosts(context.Background(), fakeClusters(t, "flaky"), time.Minute, time.Second,
		func(ctx context.Context, _ string, _ time.Duration) (http.Handler, func(), error) {
			if attempts.Add(1) == 1 {
				return nil, nil, errors.New("apiserver not ready")
			}
			return http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(rw, "ok") }), func() {}, nil
		})
	if code, body := get(t, h, "flaky"); code != http.StatusServiceUnavailable {
		t.Fatalf("first: %d %q", code, body)
	}
	if code, body := get(t, h, "flaky"); code != 200 || body != "ok" {
		t.Fatalf("second: %d %q", code, body)
	}
}

func TestTheSocketIsPrivateAndOnlyAStaleSocketIsReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	l, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("socket mode %o, want 600", perm)
	}
	// A crashed host leaves its socket behind: the next one takes its place.
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	_ = l.Close()
	l2, err := listenUnix(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	_ = l2.Close()

	file := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(file); err == nil {
		t.Fatal("a regular file was replaced")
	}
	if data, _ := os.ReadFile(file); string(data) != "keep" {
		t.Fatal("the regular file was touched")
	}
}
