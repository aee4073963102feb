//go:build tools

// Package tools pins crictl, which cluster/down.sh uses to stop every pod
// sandbox through CRI (so the CNI plugins tear their networks down) even when
// the API server or the kubelet is gone; cluster/build.sh builds it from here.
package tools

import (
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
