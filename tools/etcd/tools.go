//go:build tools

// Package tools pins the etcd server that scale-cluster-agent builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
