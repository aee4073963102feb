//go:build tools

// Package tools pins the helm CLI that installs the chart on the test cluster
// (make cluster-test); `cluster/build.sh helm` builds it from here and prints
// its path.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
