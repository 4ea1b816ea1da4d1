// Recreates the `shim` module pulumi-random keeps beside its provider: a path under
// the upstream module so it may import the provider's internal package.
module github.com/terraform-providers/terraform-provider-random/shim

go 1.25.8

require github.com/terraform-providers/terraform-provider-random v1.3.2-0.20260824155315-e1092b0cfc07
