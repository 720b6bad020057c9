package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"time"
)

// clusterRecord is the persisted part of a management cluster.
type clusterRecord struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	UUID    string    `json:"uuid"`
	Created time.Time `json:"created"`
	// Labels and Annotations are the management cluster's metadata, which the v3 API shows as
	// top-level fields (norman's metadata mapper) and accepts on create.
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// Removing is set by DELETE; the cluster disappears shortly after, like Rancher's finalizers.
	Removing *time.Time `json:"removing,omitempty"`
	// Status written by the tunnel authorizer (mcmauthorizer authorizeCluster).
	Driver      string `json:"driver,omitempty"`
	APIEndpoint string `json:"apiEndpoint,omitempty"`
	CACert      string `json:"caCert,omitempty"`
	SAToken     string `json:"saToken,omitempty"`
	// ParamsHistory is every X-API-Tunnel-Params value accepted for this cluster, in order.
	ParamsHistory []string `json:"paramsHistory,omitempty"`
	// ParamsChanges counts accepted params that changed apiEndpoint, caCert or token after they
	// were first set: each one restarts all of Rancher's downstream controllers for the cluster.
	ParamsChanges int `json:"paramsChanges"`
}

// tokenRecord is a ClusterRegistrationToken.
type tokenRecord struct {
	Name      string    `json:"name"`
	ClusterID string    `json:"clusterId"`
	Token     string    `json:"token"`
	Created   time.Time `json:"created"`
	// IssuedAt is when the value becomes visible and usable (the CRT controller is asynchronous).
	IssuedAt time.Time `json:"issuedAt"`
}

func (t *tokenRecord) id() string { return t.ClusterID + ":" + t.Name }

func (t *tokenRecord) issued(now time.Time) bool { return !now.Before(t.IssuedAt) }

type persisted struct {
	Clusters map[string]*clusterRecord `json:"clusters"`
	Tokens   map[string]*tokenRecord   `json:"tokens"`
}

// store persists clusters and tokens as one JSON file. Callers hold the simulator's lock.
type store struct {
	path string
	persisted
}

func openStore(path string) (*store, error) {
	st := &store{path: path, persisted: persisted{
		Clusters: map[string]*clusterRecord{},
		Tokens:   map[string]*tokenRecord{},
	}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &st.persisted); err != nil {
		return nil, err
	}
	if st.Clusters == nil {
		st.Clusters = map[string]*clusterRecord{}
	}
	if st.Tokens == nil {
		st.Tokens = map[string]*tokenRecord{}
	}
	return st, nil
}

func (st *store) save() error {
	data, err := json.MarshalIndent(st.persisted, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(st.path, data)
}

// nameAlphabet is the character set Kubernetes generateName and wrangler's randomtoken use.
const nameAlphabet = "bcdfghjklmnpqrstvwxz2456789"

func randomString(n int) string {
	b := make([]byte, n)
	max := big.NewInt(int64(len(nameAlphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			// crypto/rand does not fail on Linux; a predictable character is still valid.
			b[i] = nameAlphabet[0]
			continue
		}
		b[i] = nameAlphabet[v.Int64()]
	}
	return string(b)
}

// tokenValue is a registration token: 54 characters, never containing "_".
func tokenValue() string { return randomString(54) }

func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexdigits[c>>4], hexdigits[c&0xf])
	}
	return string(out)
}
