// Stands where pulumi-docker's patched `upstream` submodule adds its shim package: a
// path under the module path kreuzwerker's go.mod declares, so it may import the
// provider's internal package. The parent module is resolved by a replace in ../../go.mod.
module github.com/terraform-providers/terraform-provider-docker/shim

go 1.25.8

require github.com/terraform-providers/terraform-provider-docker v0.0.0

replace github.com/terraform-providers/terraform-provider-docker => github.com/kreuzwerker/terraform-provider-docker v0.0.0-20260916201441-96d331c98ff4
