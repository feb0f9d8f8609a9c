#!/usr/bin/env bash
# Validate every deployment file offline; exit non-zero on the first section
# that has an error (all sections run, the summary lists each).
#
#   deploy/validate.sh
#
# Sections:
#   k8s       deploy/k8s/**/*.yaml against the Kubernetes schemas bundled in the
#             kubernetes-validate package, strict (unknown fields are errors),
#             for each version in IVY_K8S_VERSIONS (default "1.32.0 1.37.0")
#   compose   deploy/compose/docker-compose.yml against the compose-spec JSON
#             schema bundled in check-jsonschema, and `docker-compose config -q`
#             (or the compose plugin) when one is installed
#   grafana   deploy/grafana/*.json: valid JSON, unique panel ids, every query
#             parses as PromQL (promql-parser), uses only ivy's metric names,
#             and every metric has a panel
#   systemd   deploy/systemd/*.service with `systemd-analyze verify` (skipped,
#             and said so, when systemd-analyze is missing); any warning fails
#   shell     bash -n on deploy/**/*.sh, and shellcheck when installed
#
# Python tools go into a venv, $IVY_VALIDATE_VENV (default target/deploy-venv),
# installed with pip from PyPI on the first run (pinned versions below) and
# reused after; the checks themselves need no network.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$(pwd)
VENV=${IVY_VALIDATE_VENV:-$ROOT/target/deploy-venv}
K8S_VERSIONS=${IVY_K8S_VERSIONS:-1.32.0 1.37.0}
PY_PKGS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 promql-parser==0.11.0)
T0=$(date +%s.%N)
FAILED=()
SUMMARY=()

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
section() { SECTION=$1; TS=$(now); echo "== $1" >&2; }
pass() { SUMMARY+=("$(printf '%-8s ok       %6s s  %s' "$SECTION" "$(secs "$TS")" "${1:-}")"); }
skip() { SUMMARY+=("$(printf '%-8s SKIPPED  %6s s  %s' "$SECTION" "$(secs "$TS")" "$1")"); echo "   skipped: $1" >&2; }
fail() {
  SUMMARY+=("$(printf '%-8s FAILED   %6s s  %s' "$SECTION" "$(secs "$TS")" "$1")")
  FAILED+=("$SECTION")
  echo "   FAILED: $1" >&2
}

# ---- tools ------------------------------------------------------------------
section tools
command -v python3 >/dev/null || { echo "validate.sh: python3 is needed" >&2; exit 1; }
stamp="$VENV/.ivy-validate-packages"
if [ "$(cat "$stamp" 2>/dev/null)" != "${PY_PKGS[*]}" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "validate.sh: python3 -m venv failed (apt-get install python3-venv?)" >&2; exit 1; }
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PKGS[@]}" \
    || { echo "validate.sh: pip install ${PY_PKGS[*]} failed" >&2; exit 1; }
  echo "${PY_PKGS[*]}" >"$stamp"
fi
pass "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tr -d '\n'), check-jsonschema $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("check-jsonschema"))'), promql-parser $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("promql-parser"))')"

# ---- k8s --------------------------------------------------------------------
section k8s
mapfile -t manifests < <(find deploy/k8s -name '*.yaml' | sort)
if [ "${#manifests[@]}" -eq 0 ]; then
  fail "no manifests under deploy/k8s"
else
  ok=1
  for v in $K8S_VERSIONS; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}" >&2 || ok=0
  done
  # Every manifest must hold at least one object (an empty file validates vacuously).
  for f in "${manifests[@]}"; do
    grep -q '^kind:' "$f" || { echo "   $f has no kind:" >&2; ok=0; }
  done
  if [ "$ok" = 1 ]; then pass "${#manifests[@]} files, strict, k8s $K8S_VERSIONS"; else fail "kubernetes-validate"; fi
fi

# ---- compose ----------------------------------------------------------------
section compose
cf=deploy/compose/docker-compose.yml
ok=1
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$cf" >&2 || ok=0
if docker compose version >/dev/null 2>&1; then
  tool="docker compose $(docker compose version --short 2>/dev/null)"
  docker compose -f "$cf" config -q >&2 || ok=0
elif command -v docker-compose >/dev/null; then
  tool="docker-compose $(docker-compose version --short 2>/dev/null)"
  docker-compose -f "$cf" config -q >&2 || ok=0
else
  tool="no compose tool installed: schema only"
fi
if [ "$ok" = 1 ]; then pass "compose-spec schema; $tool"; else fail "$cf"; fi

# ---- grafana ----------------------------------------------------------------
section grafana
if "$VENV/bin/python" - deploy/grafana/*.json <<'PY' >&2; then pass "$(ls deploy/grafana/*.json | wc -l) dashboard(s)"; else fail "dashboard check"; fi
import json, re, sys
import promql_parser

METRICS = {  # name -> type; histograms expose _bucket/_sum/_count
    "ivy_fault_duration_seconds": "histogram", "ivy_faults_in_flight": "gauge",
    "ivy_raft_term": "gauge", "ivy_raft_leader_id": "gauge", "ivy_raft_commit_index": "gauge",
    "ivy_raft_applied_index": "gauge", "ivy_raft_replication_lag_entries": "gauge",
    "ivy_raft_leader_changes_total": "counter", "ivy_proposer_batch_size": "histogram",
    "ivy_clients_registered": "gauge", "ivy_pages": "gauge", "ivy_evictions_total": "counter",
    "ivy_errors_total": "counter", "ivy_store_syncs_total": "counter",
    "ivy_releases_total": "counter",
}
known = set()
for name, kind in METRICS.items():
    known |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
MACROS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
errors = []
for path in sys.argv[1:]:
    try:
        dash = json.load(open(path))
    except ValueError as e:
        errors.append(f"{path}: not valid JSON: {e}")
        continue
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            errors.append(f"{path}: no {key}")
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels += p.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        errors.append(f"{path}: repeated panel ids")
    used = set()
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"{path}: panel {title!r} has no query")
        for t in targets:
            expr = t.get("expr", "")
            e = expr
            for m, v in MACROS.items():
                e = e.replace(m, v)
            e = re.sub(r"\$\{?\w+\}?", ".*", e)  # template variables
            try:
                promql_parser.parse(e)
            except ValueError as err:
                errors.append(f"{path}: panel {title!r}: {expr!r} does not parse: {err}")
            names = set(re.findall(r"\bivy_[a-z_]+\b", expr))
            unknown = names - known
            if unknown:
                errors.append(f"{path}: panel {title!r} uses unknown metric(s) {sorted(unknown)}")
            used |= names
    for name, kind in METRICS.items():
        forms = {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
        if not forms & used:
            errors.append(f"{path}: no panel shows {name}")
    print(f"   {path}: {len([p for p in panels if p.get('type') != 'row'])} panels, "
          f"{len(used)} metric series names used")
for e in errors:
    print("   " + e)
sys.exit(1 if errors else 0)
PY

# ---- systemd ----------------------------------------------------------------
section systemd
if ! command -v systemd-analyze >/dev/null; then
  skip "systemd-analyze is not installed (apt-get install systemd)"
else
  tmp=$(mktemp -d)
  ok=1
  # verify loads units from the directory given, and checks that ExecStart's
  # program exists: point it at a real executable for the check.
  exe=$ROOT/target/release/ivy
  [ -x "$exe" ] || exe=$(command -v true)
  for unit in deploy/systemd/*.service; do
    name=$(basename "$unit")
    sed "s#^ExecStart=/usr/local/bin/ivy#ExecStart=$exe#" "$unit" >"$tmp/$name"
    case "$name" in *@.service) instance=${name%@.service}@1.service ;; *) instance=$name ;; esac
    out=$(cd "$tmp" && systemd-analyze verify --man=no "$instance" 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
      echo "$out" | sed "s#$tmp/#deploy/systemd/#" >&2
      ok=0
    fi
  done
  rm -rf "$tmp"
  if [ "$ok" = 1 ]; then pass "$(systemd-analyze --version | head -1)"; else fail "systemd-analyze verify"; fi
fi

# ---- shell ------------------------------------------------------------------
section shell
ok=1
mapfile -t scripts < <(find deploy -name '*.sh' | sort)
for s in "${scripts[@]}"; do bash -n "$s" || ok=0; done
if command -v shellcheck >/dev/null; then
  shellcheck -S warning "${scripts[@]}" >&2 || ok=0
  sc="shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
else
  sc="bash -n only (shellcheck not installed)"
fi
if [ "$ok" = 1 ]; then pass "${#scripts[@]} scripts, $sc"; else fail "shell scripts"; fi

# ---- summary ----------------------------------------------------------------
echo >&2
printf '%s\n' "${SUMMARY[@]}" >&2
printf 'total %s s\n' "$(secs "$T0")" >&2
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "validate.sh: FAILED: ${FAILED[*]}" >&2
  exit 1
fi
echo "validate.sh: all valid" >&2
