"""Cluster AI's CrossGuard policy pack.

The rules are plain validator functions, grouped by what they check:

- `policies.cis`: the CIS Docker Benchmark v1.6.0 checks a declared
  pulumi_docker container, image or provider can express;
- `policies.cluster`: the cluster's own rules (only the proxy is public; prod's
  digests, TLS, pinned models, protected volumes; SSH host keys everywhere).
- `policies.segmentation`: least privilege between services (each TLS edge
  route names its clients; only front services on the public network).

`policies.exceptions` holds the pack's exceptions (each with its reason),
`policies.pack` turns the rules into `pulumi_policy` policies, `policies.harness`
runs them offline exactly as the engine would (unknowns included), and
`python -m policies.catalogue` writes docs/policies.md. `policies/__main__.py`
only builds the PolicyPack: it starts a gRPC server and never returns, so
nothing imports it.
"""
