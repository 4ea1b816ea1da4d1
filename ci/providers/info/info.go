// Package info holds the bridge mappings (ProviderInfo) of the three bridged
// providers this project builds from Go modules: random, tls and docker.
//
// They are written for this project, not copied from pulumi-random, pulumi-tls or
// pulumi-docker (whose provider modules the Go proxy here does not serve). They map
// the upstream Terraform providers with the same token rules and the same renames
// as those projects, so the published Python SDKs (pulumi_random, pulumi_tls,
// pulumi_docker) drive them unchanged; ci/toolchain.sh checks the generated schemas
// against the tokens and property names of the installed SDKs.
package info

import (
	"context"

	pf "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/pf/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge/tokens"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"

	tlsshim "github.com/hashicorp/terraform-provider-tls/shim"
	dockershim "github.com/terraform-providers/terraform-provider-docker/shim"
	randomshim "github.com/terraform-providers/terraform-provider-random/shim"
)

// Version is the version these providers report. It is deliberately not an
// upstream pulumi-* release number: the build sets it (-ldflags -X) from
// ci/versions.env. The CLI uses a pulumi-resource-* found on PATH whatever
// version the SDK asks for.
var Version = "0.0.0-clusterai"

// Random maps terraform-provider-random: random_password -> random:index/randomPassword:RandomPassword.
func Random() tfbridge.ProviderInfo {
	prov := tfbridge.ProviderInfo{
		P:       pf.ShimProvider(randomshim.NewProvider()),
		Name:    "random",
		Version: Version,
		// The same two engine behaviours pulumi-random enables.
		EnableAccurateBridgePreview: true,
		EnableRawStateDelta:         true,
		MetadataInfo:                tfbridge.NewProviderMetadata(nil),
	}
	// pulumi-random prefixes every type name with "Random" (random_id -> RandomId).
	makeToken := func(module, name string) (string, error) {
		return tokens.MakeStandard("random")(module, "Random"+name)
	}
	prov.MustComputeTokens(tokens.SingleModule("random_", "index", makeToken))
	return prov
}

// TLS maps terraform-provider-tls: tls_private_key -> tls:index/privateKey:PrivateKey.
func TLS() tfbridge.ProviderInfo {
	prov := tfbridge.ProviderInfo{
		P:                              pf.ShimProvider(tlsshim.NewProvider()),
		Name:                           "tls",
		Version:                        Version,
		GitHubOrg:                      "hashicorp",
		EnableZeroDefaultSchemaVersion: true,
		EnableAccurateBridgePreview:    true,
		MetadataInfo:                   tfbridge.NewProviderMetadata(nil),
	}
	prov.MustComputeTokens(tokens.SingleModule("tls_", "index", tokens.MakeStandard("tls")))
	return prov
}

// Docker maps the SDKv2 resources of kreuzwerker's terraform-provider-docker with
// pulumi-docker's names (docker_image -> RemoteImage, docker_config -> ServiceConfig).
// pulumi-docker's own native docker:index/image:Image (a build-and-push resource
// written in pulumi-docker's Go code) is not part of this provider.
func Docker() tfbridge.ProviderInfo {
	res := func(name string) string { return "docker:index/" + lowerFirst(name) + ":" + name }
	fn := func(name string) string { return "docker:index/" + name + ":" + name }
	prov := tfbridge.ProviderInfo{
		P:            shimv2.NewProvider(dockershim.NewProvider(Version)),
		Name:         "docker",
		Version:      Version,
		GitHubOrg:    "kreuzwerker",
		MetadataInfo: tfbridge.NewProviderMetadata(nil),
		Config: map[string]*tfbridge.SchemaInfo{
			// As pulumi-docker: DOCKER_HOST, else the local socket.
			"host": {Default: &tfbridge.DefaultInfo{
				EnvVars: []string{"DOCKER_HOST"},
				ComputeDefault: func(context.Context, tfbridge.ComputeDefaultOptions) (interface{}, error) {
					return "unix:///var/run/docker.sock", nil
				},
			}},
			"registry_auth": {Name: "registryAuth", MaxItemsOne: tfbridge.False()},
		},
		Resources: map[string]*tfbridge.ResourceInfo{
			"docker_config": {Tok: tfTok(res("ServiceConfig"))},
			"docker_container": {
				Tok: tfTok(res("Container")),
				// A container's name is unique on the engine: remove the old one first.
				DeleteBeforeReplace: true,
				Fields: map[string]*tfbridge.SchemaInfo{
					"command":           {Name: "command"},
					"networks_advanced": {Name: "networksAdvanced"},
				},
			},
			"docker_image": {
				Tok:    tfTok(res("RemoteImage")),
				Fields: map[string]*tfbridge.SchemaInfo{"name": {Name: "name"}},
			},
			"docker_network":        {Tok: tfTok(res("Network"))},
			"docker_secret":         {Tok: tfTok(res("Secret"))},
			"docker_service":        {Tok: tfTok(res("Service"))},
			"docker_volume":         {Tok: tfTok(res("Volume"))},
			"docker_registry_image": {Tok: tfTok(res("RegistryImage"))},
			"docker_plugin":         {Tok: tfTok(res("Plugin"))},
			"docker_tag":            {Tok: tfTok(res("Tag"))},
		},
		DataSources: map[string]*tfbridge.DataSourceInfo{
			"docker_network":        {Tok: tfFnTok(fn("getNetwork"))},
			"docker_registry_image": {Tok: tfFnTok(fn("getRegistryImage"))},
			"docker_plugin":         {Tok: tfFnTok(fn("getPlugin"))},
			"docker_image":          {Tok: tfFnTok(fn("getRemoteImage"))},
			"docker_logs":           {Tok: tfFnTok(fn("getLogs"))},
		},
	}
	// Anything the upstream adds later gets the standard token.
	prov.MustComputeTokens(tokens.SingleModule("docker_", "index", tokens.MakeStandard("docker")))
	// As pulumi-docker: a `name` left unset is the resource name plus a random suffix
	// (containers, networks, volumes), so two stacks on one engine never collide.
	prov.SetAutonaming(255, "-")
	return prov
}
