#!/usr/bin/env bash
# `make mutation`: a mutation run (mutmut, from PyPI) over the modules issue 14 names.
# Not part of CI (slow). It works on a scratch copy of the checkout, so the tree stays
# untouched: mutmut writes its mutants/ and its config (setup.cfg [mutmut]) there.
#   MODULES   the files to mutate (default: the four below)
#   TESTS     the pytest selection that must kill them (default: the unit tests that
#             exercise them; the integration and e2e tiers are left out: minutes per mutant)
#   WORK      the scratch directory (default: ${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/mutation)
# Prints mutmut's summary and the score: killed / (killed + survived + timeouts).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MUTMUT_VERSION=3.8.1
MODULES=${MODULES:-"components/hardened.py components/tls.py infra/config.py stacks/automation.py"}
TESTS=${TESTS:-"tests/unit/test_components.py tests/unit/test_config_errors.py tests/unit/test_prod_stack.py tests/unit/test_stack_operations.py tests/unit/test_dev_stack.py"}
WORK=${WORK:-${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/mutation}
PY=$REPO/.venv/bin/python

"$PY" -m pip install --quiet "mutmut==$MUTMUT_VERSION"
started=$(date +%s)
rm -rf "$WORK" && mkdir -p "$WORK"
# The checkout as it is (tracked and untracked files, not ignored ones).
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$WORK"/ 2>/dev/null || true
cd "$WORK"
{
  echo "[mutmut]"
  echo "source_paths ="
  for d in components infra stacks; do echo "    $d"; done
  echo "only_mutate ="
  for m in $MODULES; do echo "    $m"; done
  echo "also_copy ="
  for f in policies monitoring docs bench .github Makefile README.md Pulumi.yaml Pulumi.*.yaml; do echo "    $f"; done
  echo "pytest_add_cli_args_test_selection ="
  for t in $TESTS; do echo "    $t"; done
  echo "pytest_add_cli_args ="
  echo "    -p"
  echo "    no:xdist"
  echo "    -p"
  echo "    no:cacheprovider"
} > setup.cfg
"$PY" -m mutmut run --max-children "${MAX_CHILDREN:-2}" || true
"$PY" -m mutmut results --all true > results.txt || true
"$PY" - <<'PY'
import collections, re
counts = collections.Counter()
for line in open("results.txt"):
    m = re.match(r"\s*(\S+): (\w[\w ]*)$", line.rstrip())
    if m:
        counts[m[2]] += 1
killed, survived, timeout = counts["killed"], counts["survived"], counts["timeout"]
total = killed + survived + timeout
print("mutants:", dict(counts))
print(f"mutation score: {killed}/{total} = {100 * killed / total:.1f}%" if total else "mutation score: no mutants ran")
PY
echo "survivors: (cd $WORK && $PY -m mutmut results); a diff: $PY -m mutmut show NAME"
echo "mutation run done in $(($(date +%s) - started)) s"
