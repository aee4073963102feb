// Command coredns is the cluster DNS of the single-node test cluster: CoreDNS
// built with only the plugins its Corefile (cluster/manifests/coredns.yaml)
// uses. The upstream binary registers every plugin through
// github.com/coredns/coredns/core/plugin; this one imports just these, so the
// build stays small. Directive order is CoreDNS's own (dnsserver.Directives).
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
