// Command steve-proxy is an upstream remotedialer.Server that forwards HTTP requests, headers,
// query and websocket upgrades included, through a client's tunnel to 127.0.0.1:6080: the
// address Rancher's steve proxy (pkg/api/steve/proxy/proxy.go) dials through a cluster's
// stv-cluster-<id> session. The Rust tests add the headers Rancher's proxy adds
// (Impersonate-User, -Group, -Extra-*, X-API-URL-Prefix) themselves, so this program only carries
// them, unchanged, the way Rancher's transport does.
//
//	steve-proxy -listen ADDR
//	  /connect                       remotedialer endpoint; the session key is the x-tunnel-id header
//	  /proxy/{id}/{path...}          forwarded through session {id} as http://127.0.0.1:6080/{path}
package main

import (
	"flag"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"

	"github.com/rancher/remotedialer"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	flag.Parse()

	server := remotedialer.New(func(req *http.Request) (string, bool, error) {
		id := req.Header.Get("x-tunnel-id")
		return id, id != "", nil
	}, remotedialer.DefaultErrorWriter)

	mux := http.NewServeMux()
	mux.Handle("/connect", server)
	mux.HandleFunc("/proxy/{id}/{path...}", func(rw http.ResponseWriter, req *http.Request) {
		id := req.PathValue("id")
		if !server.HasSession(id) {
			http.Error(rw, "no session "+id, http.StatusServiceUnavailable)
			return
		}
		proxy := &httputil.ReverseProxy{
			Rewrite: func(r *httputil.ProxyRequest) {
				r.Out.URL = &url.URL{
					Scheme:   "http",
					Host:     "127.0.0.1:6080",
					Path:     "/" + req.PathValue("path"),
					RawQuery: req.URL.RawQuery,
				}
				r.Out.Host = id
			},
			Transport: &http.Transport{DialContext: server.Dialer(id)},
		}
		proxy.ServeHTTP(rw, req)
	})
	if err := http.ListenAndServe(*listen, mux); err != nil {
		fmt.Fprintln(os.Stderr, "steve-proxy:", err)
		os.Exit(1)
	}
}
