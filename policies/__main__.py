"""The PolicyPack the Pulumi CLI runs: `pulumi preview --policy-pack policies`.

It only builds the pack. Building it starts a gRPC server that never returns,
so nothing imports this file; tests run the rules through `policies.harness`.
"""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The CLI runs this directory with itself first on sys.path: keep our module
# names (model, parsing, ...) from shadowing anyone else's, and load this
# directory as the `policies` package whatever it is called on disk.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if "policies" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "policies", HERE / "__init__.py", submodule_search_locations=[str(HERE)]
    )
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["policies"] = package
    spec.loader.exec_module(package)

from policies.pack import build_pack  # noqa: E402

build_pack()
