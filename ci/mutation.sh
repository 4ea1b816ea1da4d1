#!/usr/bin/env bash
# `make mutation`: a mutation run (mutmut, from PyPI) over the modules issue 14 names,
# each against the unit tests that exercise it. Not part of CI (about 20 minutes for
# the four on 2 cores; docs/testing.md). Each module runs on a scratch copy of the checkout, so the
# tree stays untouched: mutmut writes its mutants/ and its config (setup.cfg) there.
#
#   PLAN      "module=test,test;module=test..." (default: the four below)
#   WORK      the scratch root (default: ${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/mutation)
#   MAX_CHILDREN  mutants run at once (default 2)
#
# Prints each module's and the total score: killed / (killed + survived + timeouts),
# and writes $WORK/<module>/results.txt (every mutant and its fate).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
MUTMUT_VERSION=3.8.1
# The integration and e2e tiers are left out: minutes per mutant. So are tests whose
# fixtures are module-scoped (test_dev_stack.py, test_prod_stack.py): mutmut runs, for
# each mutant, only the tests that called the mutated function while they ran, and a
# module fixture's evaluation counts for the first test only; the modules' own unit
# tests (test_hardened.py, test_tls_component.py) call the code in every test.
DEFAULT_PLAN="components/hardened.py=tests/unit/test_hardened.py,tests/unit/test_components.py,tests/unit/test_file_holders.py"
DEFAULT_PLAN+=";components/tls.py=tests/unit/test_tls_component.py,tests/unit/test_components.py"
DEFAULT_PLAN+=";infra/config.py=tests/unit/test_config_errors.py,tests/unit/test_config_checks.py"
DEFAULT_PLAN+=";stacks/automation.py=tests/unit/test_stack_operations.py"
# Tests that start `make` (the checkout's own venv, outside mutmut's harness) cannot run here.
DESELECT="not test_make_prints_only_the_json_on_stdout"
PLAN=${PLAN:-$DEFAULT_PLAN}
WORK=${WORK:-${CLUSTER_AI_CACHE:-/var/cache/cluster-ai}/mutation}
PY=$REPO/.venv/bin/python

"$PY" -m pip install --quiet "mutmut==$MUTMUT_VERSION"
started=$(date +%s)

run_module() {
  # run_module MODULE TESTS (comma-separated): one mutmut run in its own scratch copy.
  local module=$1 tests=$2 dir t
  dir=$WORK/${module//\//_}
  rm -rf "${dir:?}" && mkdir -p "$dir"
  # The checkout as it is (tracked and untracked files, not ignored ones).
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$dir"/ 2>/dev/null) || true
  {
    echo "[mutmut]"
    echo "source_paths ="
    for t in components infra stacks; do echo "    $t"; done
    echo "only_mutate ="
    echo "    $module"
    echo "also_copy ="
    for t in policies monitoring docs bench .github Makefile README.md Pulumi.yaml Pulumi.*.yaml; do echo "    $t"; done
    echo "pytest_add_cli_args_test_selection ="
    for t in ${tests//,/ }; do echo "    $t"; done
    echo "pytest_add_cli_args ="
    echo "    -k"
    echo "    $DESELECT"
    echo "    -p"
    echo "    no:xdist"
    echo "    -p"
    echo "    no:cacheprovider"
  } >"$dir/setup.cfg"
  local module_started
  module_started=$(date +%s)
  (cd "$dir" && "$PY" -m mutmut run --max-children "${MAX_CHILDREN:-2}" >"$dir/run.log" 2>&1) || true
  (cd "$dir" && "$PY" -m mutmut results --all true >"$dir/results.txt" 2>&1) || true
  echo "$module: $(score "$dir/results.txt") in $(($(date +%s) - module_started)) s (tests: $tests)"
}

score() {
  # score RESULTS: "killed/total = P%" and the counts of every other fate.
  "$PY" - "$1" <<'PY'
import collections, re, sys
counts = collections.Counter()
for line in open(sys.argv[1]):
    m = re.match(r"\s*(\S+): (\w[\w ]*)$", line.rstrip())
    if m:
        counts[m[2]] += 1
killed, survived, timeout = counts["killed"], counts["survived"], counts["timeout"]
total = killed + survived + timeout
print(f"{killed}/{total} = {100 * killed / total:.1f}% {dict(counts)}" if total else f"no mutants ran {dict(counts)}")
PY
}

IFS=';' read -ra entries <<<"$PLAN"
for entry in "${entries[@]}"; do
  run_module "${entry%%=*}" "${entry#*=}"
done
cat "$WORK"/*/results.txt >"$WORK/results.txt" 2>/dev/null || true
echo "all modules: $(score "$WORK/results.txt")"
echo "survivors: grep survived $WORK/*/results.txt; a diff: (cd $WORK/<module> && $PY -m mutmut show NAME)"
echo "mutation run done in $(($(date +%s) - started)) s"
