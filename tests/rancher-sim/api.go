package main

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
)

// removalDelay is how long a deleted cluster stays in state "removing" (Rancher's finalizers).
const removalDelay = 500 * time.Millisecond

func (s *sim) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "pong")
	})
	mux.HandleFunc("GET /v3/settings/cacerts", s.handleCACerts)
	mux.HandleFunc("GET /v3/import/{filename}", s.handleImport)
	mux.HandleFunc("/v3/connect", s.handleTunnel)
	mux.HandleFunc("/v3/connect/register", s.handleTunnel)

	mux.HandleFunc("GET /v3/clusters", s.authed(s.listClusters))
	mux.HandleFunc("POST /v3/clusters", s.authed(s.createCluster))
	mux.HandleFunc("GET /v3/clusters/{id}", s.authed(s.getCluster))
	mux.HandleFunc("DELETE /v3/clusters/{id}", s.authed(s.deleteCluster))
	mux.HandleFunc("GET /v3/clusters/{id}/clusterregistrationtokens", s.authed(s.listClusterTokens))
	mux.HandleFunc("GET /v3/clusterregistrationtokens", s.authed(s.listTokens))
	mux.HandleFunc("POST /v3/clusterregistrationtokens", s.authed(s.createToken))
	mux.HandleFunc("GET /v3/clusterregistrationtokens/{id}", s.authed(s.getToken))

	// Rancher's steve proxy, for the UI's /v1 API of a downstream cluster (steve.go).
	mux.HandleFunc("/k8s/clusters/{id}/v1/", s.authed(s.handleSteve))

	mux.HandleFunc("GET /sim/stats", s.loopbackOnly(s.handleSimStats))
	mux.HandleFunc("GET /sim/clusters/{id}/stats", s.loopbackOnly(s.handleStats))
	mux.HandleFunc("POST /sim/faults", s.loopbackOnly(s.handleFaults))
	return mux
}

// authed checks the API bearer token. Rancher answers a missing or unknown token with this exact
// 401 body (pkg/auth/requests/authenticate.go: "must authenticate").
func (s *sim) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		given, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if ok {
			for _, t := range s.cfg.tokens {
				if subtle.ConstantTimeCompare([]byte(given), []byte(t)) == 1 {
					h(w, r)
					return
				}
			}
		}
		writeJSON(w, http.StatusUnauthorized, map[string]any{
			"type": "error", "status": "401", "message": "must authenticate",
		})
	}
}

func (s *sim) loopbackOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !isLoopback(r) {
			http.Error(w, "debug endpoints answer loopback clients only", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// apiError writes a norman API error (norman api/handler/error.go toError, as the JSON writer
// renders it).
func apiError(w http.ResponseWriter, status int, code, message, field string) {
	body := map[string]any{
		"type": "error", "baseType": "error", "status": status, "code": code, "message": message,
	}
	if field != "" {
		body["fieldName"] = field
	}
	writeJSON(w, status, body)
}

func baseURL(r *http.Request) string { return "https://" + r.Host }

func collection(r *http.Request, resourceType string, data []map[string]any) map[string]any {
	self := baseURL(r) + r.URL.Path
	if data == nil {
		data = []map[string]any{}
	}
	return map[string]any{
		"type":         "collection",
		"resourceType": resourceType,
		"links":        map[string]string{"self": self},
		"createTypes":  map[string]string{resourceType: self},
		"actions":      map[string]string{},
		"pagination":   map[string]any{"limit": 1000, "total": len(data)},
		"sort":         map[string]any{"order": "asc", "reverse": self + "?order=desc"},
		"filters":      map[string]any{},
		"data":         data,
	}
}

func timeFields(m map[string]any, created time.Time) {
	m["created"] = created.UTC().Format(time.RFC3339)
	m["createdTS"] = created.UnixMilli()
}

// clusterJSON renders a cluster as the v3 API does (status fields flattened). Callers hold s.mu.
func (s *sim) clusterJSON(r *http.Request, rec *clusterRecord) map[string]any {
	rt := s.stats(rec.ID)
	self := baseURL(r) + "/v3/clusters/" + rec.ID
	state, transitioning, message := clusterState(rec, rt)
	m := map[string]any{
		"id":                   rec.ID,
		"type":                 "cluster",
		"baseType":             "cluster",
		"name":                 rec.Name,
		"uuid":                 rec.UUID,
		"creatorId":            "user-sim01",
		"internal":             false,
		"fleetWorkspaceName":   "fleet-default",
		"importedConfig":       map[string]any{"type": "importedConfig"},
		"driver":               rec.Driver,
		"state":                state,
		"transitioning":        transitioning,
		"transitioningMessage": message,
		"conditions":           rt.conditionList(),
		"links": map[string]string{
			"self":                      self,
			"update":                    self,
			"remove":                    self,
			"clusterRegistrationTokens": self + "/clusterregistrationtokens",
		},
		"actions": map[string]string{
			"generateKubeconfig": self + "?action=generateKubeconfig",
		},
	}
	timeFields(m, rec.Created)
	m["labels"] = nonNilMap(rec.Labels)
	m["annotations"] = nonNilMap(rec.Annotations)
	if rec.APIEndpoint != "" {
		m["apiEndpoint"] = rec.APIEndpoint
		m["caCert"] = rec.CACert
	}
	if rt.KubeVersion != "" {
		m["version"] = map[string]any{"gitVersion": rt.KubeVersion}
	}
	if rt.AgentImage != "" {
		m["agentImage"] = rt.AgentImage
	}
	if rec.Removing != nil {
		m["removed"] = rec.Removing.UTC().Format(time.RFC3339)
	}
	return m
}

func (s *sim) listClusters(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := r.URL.Query()
	var data []map[string]any
	if s.hidingClusters() {
		writeJSON(w, http.StatusOK, collection(r, "cluster", data))
		return
	}
	for _, rec := range s.sortedClusters() {
		if v := q.Get("name"); v != "" && rec.Name != v {
			continue
		}
		if v := q.Get("id"); v != "" && rec.ID != v {
			continue
		}
		data = append(data, s.clusterJSON(r, rec))
	}
	writeJSON(w, http.StatusOK, collection(r, "cluster", data))
}

func (s *sim) sortedClusters() []*clusterRecord {
	out := make([]*clusterRecord, 0, len(s.st.Clusters))
	for _, rec := range s.st.Clusters {
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

func (s *sim) createCluster(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		apiError(w, http.StatusUnprocessableEntity, "InvalidBodyContent", err.Error(), "")
		return
	}
	name, _ := body["name"].(string)
	if name == "" {
		apiError(w, http.StatusUnprocessableEntity, "MissingRequired", "", "name")
		return
	}
	if _, ok := body["importedConfig"]; !ok {
		// Only imported clusters are simulated; any other driver config is a test mistake.
		apiError(w, http.StatusUnprocessableEntity, "InvalidBodyContent", "rancher-sim only creates imported clusters (importedConfig)", "importedConfig")
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Rancher's canUseClusterName (pkg/api/norman/store/cluster/cluster_store.go): names are
	// unique case-insensitively among clusters not being removed.
	for _, rec := range s.st.Clusters {
		if rec.Removing == nil && strings.EqualFold(rec.Name, name) {
			apiError(w, http.StatusUnprocessableEntity, "NotUnique", "", "Cluster name")
			return
		}
	}
	id := s.newClusterID()
	now := time.Now()
	rec := &clusterRecord{ID: id, Name: name, UUID: randomUUID(), Created: now,
		Labels: stringMap(body["labels"]), Annotations: stringMap(body["annotations"])}
	s.st.Clusters[id] = rec
	// Rancher's CRT controller creates default-token for every cluster, asynchronously.
	s.addToken(id, "default-token", now)
	if err := s.st.save(); err != nil {
		delete(s.st.Clusters, id)
		apiError(w, http.StatusInternalServerError, "ServerError", err.Error(), "")
		return
	}
	s.startController(id)
	writeJSON(w, http.StatusCreated, s.clusterJSON(r, rec))
}

func (s *sim) newClusterID() string {
	for {
		id := "c-" + randomString(5)
		if _, taken := s.st.Clusters[id]; !taken {
			return id
		}
	}
}

// addToken creates a CRT whose value appears after the configured delay. Callers hold s.mu.
func (s *sim) addToken(clusterID, name string, now time.Time) *tokenRecord {
	t := &tokenRecord{
		Name: name, ClusterID: clusterID, Token: tokenValue(), Created: now,
		IssuedAt: now.Add(s.cfg.tokenDelay),
	}
	s.st.Tokens[t.id()] = t
	return t
}

func (s *sim) lookupCluster(w http.ResponseWriter, r *http.Request) *clusterRecord {
	id := r.PathValue("id")
	rec, ok := s.st.Clusters[id]
	if !ok || s.hidingClusters() {
		apiError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("clusters.management.cattle.io %q not found", id), "")
		return nil
	}
	return rec
}

func (s *sim) getCluster(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec := s.lookupCluster(w, r); rec != nil {
		writeJSON(w, http.StatusOK, s.clusterJSON(r, rec))
	}
}

func (s *sim) deleteCluster(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.lookupCluster(w, r)
	if rec == nil {
		return
	}
	if rec.Removing == nil {
		now := time.Now()
		rec.Removing = &now
		if err := s.st.save(); err != nil {
			apiError(w, http.StatusInternalServerError, "ServerError", err.Error(), "")
			return
		}
		id := rec.ID
		time.AfterFunc(removalDelay, func() { s.removeCluster(id) })
	}
	writeJSON(w, http.StatusOK, s.clusterJSON(r, rec))
}

// removeCluster finishes a deletion: the cluster and its tokens go away. Open tunnel sessions stay
// open, as in Rancher (nothing there ends a session when its cluster is deleted), but new
// connects fail with "cluster not found".
func (s *sim) removeCluster(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.st.Clusters, id)
	for key, t := range s.st.Tokens {
		if t.ClusterID == id {
			delete(s.st.Tokens, key)
		}
	}
	if err := s.st.save(); err != nil {
		s.logf("saving state after removing %s: %v", id, err)
	}
	s.stopController(id)
}

// finishPendingRemovals completes deletions interrupted by a restart.
func (s *sim) finishPendingRemovals() {
	s.mu.Lock()
	var ids []string
	for id, rec := range s.st.Clusters {
		if rec.Removing != nil {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.removeCluster(id)
	}
}

// tokenJSON renders a CRT. From 2.13 the value sits in Secret crt-token-<name>: the object first
// shows neither, then tokenSecretName with the "{token}" placeholder in its commands, and only then
// the value the API fills in. Before 2.13 status.token appears directly. Callers hold s.mu.
func (s *sim) tokenJSON(r *http.Request, t *tokenRecord, now time.Time) map[string]any {
	self := baseURL(r) + "/v3/clusterregistrationtokens/" + t.id()
	m := map[string]any{
		"id":          t.id(),
		"type":        "clusterRegistrationToken",
		"baseType":    "clusterRegistrationToken",
		"name":        t.Name,
		"namespaceId": t.ClusterID,
		"clusterId":   t.ClusterID,
		"state":       "active",
		"links": map[string]string{
			"self": self, "remove": self, "update": self,
			"cluster": baseURL(r) + "/v3/clusters/" + t.ClusterID,
		},
		"actions": map[string]string{},
	}
	timeFields(m, t.Created)
	value := ""
	switch {
	case t.issued(now):
		value = t.Token
	case s.cfg.version.tokenInSecret() && now.After(t.IssuedAt.Add(-s.cfg.tokenDelay/2)):
		// The Secret exists but the API's cache has not caught up yet.
		value = "{token}"
	}
	if s.cfg.version.tokenInSecret() && value != "" {
		m["tokenSecretName"] = "crt-token-" + t.Name
	}
	if value == "" {
		return m
	}
	manifest := s.cfg.serverURL + "/v3/import/" + value + "_" + t.ClusterID + ".yaml"
	if value != "{token}" {
		m["token"] = value
	}
	m["manifestUrl"] = manifest
	m["command"] = "kubectl apply -f " + manifest
	m["insecureCommand"] = "curl --insecure -sfL " + manifest + " | kubectl apply -f -"
	m["nodeCommand"] = fmt.Sprintf("sudo docker run -d --privileged --restart=unless-stopped --net=host -v /etc/kubernetes:/etc/kubernetes -v /var/run:/var/run %s --server %s --token %s --ca-checksum %s",
		s.agentImage(), s.cfg.serverURL, value, s.ca.checksum())
	return m
}

func (s *sim) sortedTokens() []*tokenRecord {
	out := make([]*tokenRecord, 0, len(s.st.Tokens))
	for _, t := range s.st.Tokens {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].id() < out[j].id()
	})
	return out
}

func (s *sim) writeTokens(w http.ResponseWriter, r *http.Request, clusterID string) {
	now := time.Now()
	var data []map[string]any
	name := r.URL.Query().Get("name")
	for _, t := range s.sortedTokens() {
		if (clusterID != "" && t.ClusterID != clusterID) || (name != "" && t.Name != name) {
			continue
		}
		data = append(data, s.tokenJSON(r, t, now))
	}
	writeJSON(w, http.StatusOK, collection(r, "clusterRegistrationToken", data))
}

func (s *sim) listTokens(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeTokens(w, r, r.URL.Query().Get("clusterId"))
}

func (s *sim) listClusterTokens(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rec := s.lookupCluster(w, r); rec != nil {
		s.writeTokens(w, r, rec.ID)
	}
}

func (s *sim) getToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.st.Tokens[r.PathValue("id")]
	if !ok {
		apiError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("clusterregistrationtokens.management.cattle.io %q not found", r.PathValue("id")), "")
		return
	}
	writeJSON(w, http.StatusOK, s.tokenJSON(r, t, time.Now()))
}

func (s *sim) createToken(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ClusterID string `json:"clusterId"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		apiError(w, http.StatusUnprocessableEntity, "InvalidBodyContent", err.Error(), "")
		return
	}
	if body.ClusterID == "" {
		apiError(w, http.StatusUnprocessableEntity, "MissingRequired", "", "clusterId")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.st.Clusters[body.ClusterID]; !ok {
		apiError(w, http.StatusUnprocessableEntity, "InvalidReference", "", "clusterId")
		return
	}
	now := time.Now()
	t := s.addToken(body.ClusterID, "crt-"+randomString(5), now)
	if !s.cfg.version.tokenInSecret() {
		// Before 2.13 the API store generates the value on create (cluster_registration_store.go).
		t.IssuedAt = now
	}
	if err := s.st.save(); err != nil {
		delete(s.st.Tokens, t.id())
		apiError(w, http.StatusInternalServerError, "ServerError", err.Error(), "")
		return
	}
	writeJSON(w, http.StatusCreated, s.tokenJSON(r, t, now))
}

func (s *sim) handleCACerts(w http.ResponseWriter, r *http.Request) {
	self := baseURL(r) + "/v3/settings/cacerts"
	writeJSON(w, http.StatusOK, map[string]any{
		"id": "cacerts", "type": "setting", "baseType": "setting", "name": "cacerts",
		"value": s.ca.pem, "default": "", "customized": false, "source": "",
		"links": map[string]string{"self": self},
	})
}

// handleImport serves /v3/import/<token>_<clusterId>.yaml (unauthenticated) with the text and
// status codes of pkg/api/norman/customization/clusterregistrationtokens/import.go.
func (s *sim) handleImport(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	base := strings.TrimSuffix(r.PathValue("filename"), ".yaml")
	token, clusterID, ok := strings.Cut(base, "_")
	if !ok {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "invalid filename format, expected {token}_{clusterId}.yaml")
		return
	}
	s.mu.Lock()
	_, clusterOK := s.st.Clusters[clusterID]
	valid := clusterOK && s.tokenValid(clusterID, token, time.Now())
	s.mu.Unlock()
	if !valid {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "cluster not found or invalid token")
		return
	}
	manifest, err := s.renderManifest(token, "", "")
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, err.Error())
		return
	}
	_, _ = w.Write(manifest)
}

// tokenValid reports whether token is an issued CRT of the cluster. Callers hold s.mu.
func (s *sim) tokenValid(clusterID, token string, now time.Time) bool {
	for _, t := range s.st.Tokens {
		if t.ClusterID == clusterID && t.issued(now) && subtle.ConstantTimeCompare([]byte(t.Token), []byte(token)) == 1 {
			return true
		}
	}
	return false
}

// clusterByToken finds the cluster an issued registration token belongs to. Callers hold s.mu.
func (s *sim) clusterByToken(token string, now time.Time) *clusterRecord {
	if token == "" {
		return nil
	}
	for _, t := range s.st.Tokens {
		if t.issued(now) && subtle.ConstantTimeCompare([]byte(t.Token), []byte(token)) == 1 {
			return s.st.Clusters[t.ClusterID]
		}
	}
	return nil
}

func (s *sim) handleStats(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.PathValue("id")
	rec, ok := s.st.Clusters[id]
	if !ok {
		apiError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("cluster %q not found", id), "")
		return
	}
	rt := s.stats(id)
	rt.ConnectedNow = rt.conditionStatus(condConnected) == "True"
	state, _, message := clusterState(rec, rt)
	writeJSON(w, http.StatusOK, map[string]any{
		"id":            rec.ID,
		"name":          rec.Name,
		"state":         state,
		"message":       message,
		"conditions":    rt.conditionList(),
		"paramsHistory": nonNil(rec.ParamsHistory),
		"paramsChanges": rec.ParamsChanges,
		"labels":        nonNilMap(rec.Labels),
		"driver":        rec.Driver,
		"apiEndpoint":   rec.APIEndpoint,
		"stats":         rt,
	})
}

// handleSimStats sums what the simulator does to all clusters: watches held, applies, and the
// browse loop's latencies (for benchmarks).
func (s *sim) handleSimStats(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var watches, synced, applies, mainOpen, steveOpen int
	var browse []*browseStats
	for id := range s.st.Clusters {
		rt := s.stats(id)
		watches += rt.Watches
		synced += rt.WatchesSynced
		applies += rt.ManifestApplies
		mainOpen += rt.MainSessionsOpen
		steveOpen += rt.SteveSessionOpen
		if rt.Browse != nil {
			browse = append(browse, rt.Browse)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"clusters":          len(s.st.Clusters),
		"watchSet":          s.cfg.watchSet,
		"watches":           watches,
		"watchesSynced":     synced,
		"manifestApplies":   applies,
		"mainSessionsOpen":  mainOpen,
		"steveSessionsOpen": steveOpen,
		"browsedClusters":   len(browse),
		"browse":            summarize(browse),
	})
}

// handleFaults injects faults a real Rancher can show an agent: {"hideClustersSeconds": N} makes
// cluster lists come back empty and cluster GETs answer 404 for N seconds, as a wrong URL behind a
// proxy or a token that lost its rights would.
func (s *sim) handleFaults(w http.ResponseWriter, r *http.Request) {
	var body struct {
		HideClustersSeconds float64 `json:"hideClustersSeconds"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.hideClustersUntil = time.Now().Add(time.Duration(body.HideClustersSeconds * float64(time.Second)))
	s.mu.Unlock()
	s.logf("fault: clusters hidden for %.1fs", body.HideClustersSeconds)
	w.WriteHeader(http.StatusNoContent)
}

// hidingClusters reports whether the hide-clusters fault is on. Callers hold s.mu.
func (s *sim) hidingClusters() bool { return time.Now().Before(s.hideClustersUntil) }

// stringMap reads a JSON object of strings (labels, annotations); anything else is ignored.
func stringMap(v any) map[string]string {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	out := make(map[string]string, len(obj))
	for k, val := range obj {
		if str, ok := val.(string); ok {
			out[k] = str
		}
	}
	return out
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNil(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}
