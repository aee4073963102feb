// Command netcheck is the probe cluster/smoke.sh runs in pods of the test
// cluster (image kubefaas.local/cluster-netcheck): a static binary with no
// shell around it, so the smoke test needs no image from elsewhere.
//
//	netcheck serve ADDR          answer every HTTP request with "netcheck <hostname>"
//	netcheck get URL             GET URL, print the body; fail unless 200
//	netcheck resolve NAME...     resolve each NAME through the pod's resolv.conf
//	netcheck api PATH            GET PATH from the API server with the pod's
//	                             service-account token; print the HTTP status
//	netcheck alloc MIB           allocate and touch MIB MiB of memory, then exit 0
//	                             (under a smaller memory limit: OOM-killed)
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		fail("usage: netcheck serve ADDR | get URL | resolve NAME... | api PATH")
	}
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "netcheck %s\n", host)
		})
		fail(http.ListenAndServe(os.Args[2], nil))
	case "get":
		client := &http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(os.Args[2])
		if err != nil {
			fail(err)
		}
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%d %s", resp.StatusCode, body)
		if resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
	case "resolve":
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, name := range os.Args[2:] {
			addrs, err := net.DefaultResolver.LookupHost(ctx, name)
			if err != nil {
				fail(err)
			}
			fmt.Println(name, addrs)
		}
	case "api":
		const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
		token, err := os.ReadFile(sa + "token")
		if err != nil {
			fail(err)
		}
		ca, err := os.ReadFile(sa + "ca.crt")
		if err != nil {
			fail(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool},
		}}
		host := net.JoinHostPort(os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT"))
		req, _ := http.NewRequest("GET", "https://"+host+os.Args[2], nil)
		req.Header.Set("Authorization", "Bearer "+string(token))
		resp, err := client.Do(req)
		if err != nil {
			fail(err)
		}
		resp.Body.Close()
		fmt.Println(resp.StatusCode)
	case "alloc":
		mib, err := strconv.Atoi(os.Args[2])
		if err != nil {
			fail(err)
		}
		held := make([][]byte, 0, mib)
		for i := 0; i < mib; i++ {
			chunk := make([]byte, 1<<20)
			for j := 0; j < len(chunk); j += 4096 {
				chunk[j] = 1
			}
			held = append(held, chunk)
		}
		fmt.Printf("allocated %d MiB\n", len(held))
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(err any) {
	fmt.Fprintln(os.Stderr, "netcheck:", err)
	os.Exit(1)
}
