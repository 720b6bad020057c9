package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	steveauth "github.com/rancher/steve/pkg/auth"
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
func newSteveServer(ctx context.Context, kubeconfig string, ready time.Duration) (http.Handler, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading its kubeconfig: %w", err)
	}
	// As Steve's own command and Rancher do: Steve's informers and per-user clients must not be
	// throttled by client-go's default 5 requests per second.
	cfg.RateLimiter = ratelimit.None

	server, err := steveserver.New(ctx, cfg, &steveserver.Options{
		AuthMiddleware: headerAuth,
	})
	if err != nil {
		return nil, fmt.Errorf("starting Steve: %w", err)
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
			return nil, ctx.Err()
		case <-deadline.C:
			return nil, fmt.Errorf("Steve loaded no schemas within %v (is the apiserver up?)", ready)
		}
	}
	return server, nil
}
