package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/rancher/apiserver/pkg/types"
	steveauth "github.com/rancher/steve/pkg/auth"
	steveschema "github.com/rancher/steve/pkg/schema"
	steveserver "github.com/rancher/steve/pkg/server"
	"github.com/rancher/wrangler/v3/pkg/ratelimit"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/clientcmd"
)

// headerAuth is how the real agent's embedded Rancher authenticates Steve requests (its
// NewHeaderAuth): the user, groups and extras of Rancher's impersonation headers; a request
// without them is system:unauthenticated, with no admin fallback.
var headerAuth = steveauth.ToMiddleware(steveauth.AuthenticatorFunc(steveauth.Impersonation))

// nodes is the schema whose presence shows that Steve's first discovery has completed.
var nodes = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// newSteveServer starts a Steve server for the cluster behind kubeconfig (its admin
// credentials; every request then impersonates the authenticated user) and returns its handler
// once its schemas are loaded: before that, Steve answers 404 for every type.
//
// The release function lets go of what cancelling ctx leaves behind in Steve v0.9.18: its
// cluster cache's work queue is never shut down, so its worker goroutine keeps the cache alive,
// and with it the stores of every watcher it started; handing it an empty schema set stops and
// drops those watchers. Some memory (about 4.5 MiB) and three idle goroutines per released
// server still remain (measured; see docs/benchmarks.md). The real agent never releases its
// Steve server, so it never meets this.
func newSteveServer(ctx context.Context, kubeconfig string, ready time.Duration) (http.Handler, func(), error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("loading its kubeconfig: %w", err)
	}
	// As Steve's own command and Rancher do: Steve's informers and per-user clients must not be
	// throttled by client-go's default 5 requests per second.
	cfg.RateLimiter = ratelimit.None

	server, err := steveserver.New(ctx, cfg, &steveserver.Options{
		AuthMiddleware: headerAuth,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("starting Steve: %w", err)
	}
	release := func() {
		empty := steveschema.NewCollection(context.Background(), types.EmptyAPISchemas(), nil)
		if err := server.ClusterCache.OnSchemas(empty); err != nil {
			slog.Warn("releasing Steve's cluster cache", "error", err)
		}
	}

	// Reset notifies under the collection's read lock, so the callback only signals; the
	// check runs here, outside the lock (a nested read lock can deadlock behind a writer).
	changed := make(chan struct{}, 1)
	server.SchemaFactory.OnChange(ctx, func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	deadline := time.NewTimer(ready)
	defer deadline.Stop()
	for server.SchemaFactory.ByGVR(nodes) == "" {
		select {
		case <-changed:
		case <-ctx.Done():
			release()
			return nil, nil, ctx.Err()
		case <-deadline.C:
			release()
			return nil, nil, fmt.Errorf("Steve loaded no schemas within %v (is the apiserver up?)", ready)
		}
	}
	return server, release, nil
}
