// Package shim exposes the upstream terraform-provider-random (a Plugin Framework
// provider) to the Pulumi bridge. Its import path lies under the upstream module,
// which is what lets it import internal/provider.
package shim

import (
	tfpf "github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/terraform-providers/terraform-provider-random/internal/provider"
)

// NewProvider returns the upstream provider, unmodified.
func NewProvider() tfpf.Provider { return provider.New() }
