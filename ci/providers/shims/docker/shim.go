// Package shim exposes the SDKv2 half of kreuzwerker's terraform-provider-docker
// (containers, images, networks, volumes, ...) to the Pulumi bridge, as
// pulumi-docker's own shim does. The upstream's Plugin Framework half (compose,
// buildx, actions) is not served, as in pulumi-docker.
package shim

import (
	"github.com/hashicorp/terraform-plugin-sdk/v2/helper/schema"
	"github.com/terraform-providers/terraform-provider-docker/internal/provider"
)

// NewProvider returns the upstream SDKv2 provider, unmodified.
func NewProvider(version string) *schema.Provider { return provider.New(version)() }
