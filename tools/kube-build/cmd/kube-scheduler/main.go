// Command kube-scheduler is the upstream kube-scheduler: the same main as
// k8s.io/kubernetes/cmd/kube-scheduler, built from the published
// k8s.io/kubernetes module for kompress's node test tier. Build it with
// .ci/build-kube.sh, which sets the version ldflags.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register" // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version" // for version metric registration
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	command := app.NewSchedulerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
