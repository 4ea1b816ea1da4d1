// Recreates the `shim` module pulumi-tls keeps beside its provider: a path under
// the upstream module so it may import the provider's internal package.
module github.com/hashicorp/terraform-provider-tls/shim

go 1.25.8

require github.com/hashicorp/terraform-provider-tls v1.2.1-0.20260819085117-d044ca7c6f52
