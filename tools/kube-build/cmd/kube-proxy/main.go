// Command kube-proxy is the upstream kube-proxy: the same main as
// k8s.io/kubernetes/cmd/kube-proxy, built from the published
// k8s.io/kubernetes module for kompress's node test tier. Build it with
// .ci/build-kube.sh, which sets the version ldflags.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // for client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	command := app.NewProxyCommand()
	code := cli.Run(command)
	os.Exit(code)
}
