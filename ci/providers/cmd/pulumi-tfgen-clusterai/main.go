// pulumi-tfgen-clusterai NAME schema --out DIR: writes the Pulumi package schema
// of one of the bridged providers (random, tls, docker) with the bridge's own
// generator, so the provider binary can embed it.
package main

import (
	"fmt"
	"os"

	pftfgen "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfgen"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"

	"clusterai/providers/info"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pulumi-tfgen-clusterai random|tls|docker schema --out DIR")
		os.Exit(2)
	}
	name := os.Args[1]
	// The generators parse os.Args themselves: drop the provider name.
	os.Args = append(os.Args[:1], os.Args[2:]...)
	switch name {
	case "random":
		pftfgen.Main("random", info.Random())
	case "tls":
		pftfgen.Main("tls", info.TLS())
	case "docker":
		tfgen.Main("docker", info.Version, info.Docker())
	default:
		fmt.Fprintf(os.Stderr, "unknown provider %q (want random, tls or docker)\n", name)
		os.Exit(2)
	}
}
