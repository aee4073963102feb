//go:build tools

// Package tools pins the etcd server that the single-node test cluster runs;
// cluster/build.sh builds it from here. etcd's own go.mod replaces its
// sibling modules with local paths, so `go install go.etcd.io/etcd/server/v3@v`
// cannot build it; required from this module, the siblings resolve to their
// published versions instead.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
