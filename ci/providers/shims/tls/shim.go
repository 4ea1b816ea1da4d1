// Package shim exposes the upstream terraform-provider-tls (a Plugin Framework
// provider) to the Pulumi bridge. Its import path lies under the upstream module,
// which is what lets it import internal/provider.
package shim

import (
	tfpf "github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-provider-tls/internal/provider"
)

// NewProvider returns the upstream provider, unmodified.
func NewProvider() tfpf.Provider { return provider.New() }
