//go:build tools

// Package tools pins the upstream remotedialer server program used by the benchmark.
package tools

import (
	_ "github.com/rancher/remotedialer/server"
)
