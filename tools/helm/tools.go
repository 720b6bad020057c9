//go:build tools

// Package tools pins helm, which only the chart tests use (lint, template, install into a KWOK
// cluster); it is not part of the agent's toolchain.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
