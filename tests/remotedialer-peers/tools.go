//go:build tools

// Package tools pins the upstream remotedialer test server program.
package tools

import (
	_ "github.com/rancher/remotedialer/server"
)
