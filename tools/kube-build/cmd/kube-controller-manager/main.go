// Command kube-controller-manager is the upstream kube-controller-manager: the same main as
// k8s.io/kubernetes/cmd/kube-controller-manager, built from the published
// k8s.io/kubernetes module for kompress's end-to-end test tier. Build it with
// .ci/build-kube.sh, which sets the version ldflags so the binary does not
// report v0.0.0.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	command := app.NewControllerManagerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
