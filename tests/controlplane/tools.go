//go:build tools

// Package tools pins command packages built from this module (helm) so `go mod tidy` keeps them.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
