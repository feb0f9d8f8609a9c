#!/usr/bin/env bash
# Smoke test of the Compose deployment: image, 3-node cluster, clients in their
# own containers, a leader kill, a network partition, and teardown.
#
#   deploy/compose/smoke.sh
#
# Steps (each one timed; a table of the timings closes the run):
#   1. build the image (deploy/docker/build.sh; IVY_BIN=... reuses a binary,
#      IVY_SMOKE_BUILD=0 reuses an existing image)
#   2. docker-compose up -d cm1 cm2 cm3; wait until a leader is elected
#   3. a one-shot client container: write/read, quit
#   4. two long-lived client containers A and B: a page moves A -> B, B's write
#      invalidates A's copy (CM -> client calls across containers)
#   5. docker kill the leader; wait for a new leader; A and B carry on; start
#      the killed node again and wait until it has caught up
#   6. docker network disconnect the (new) leader; wait for a leader among the
#      other two; A and B carry on; reconnect it (same static address) and wait
#      until the three agree again
#   7. A and B quit; docker-compose down -v; nothing of the project is left
#
# Exits non-zero with a message on the first failed check. Everything it starts
# is removed on exit (trap), success or not; every wait is bounded, and the
# run after the image build is bounded by IVY_SMOKE_BUDGET_S (default 600 s).
#
# Environment: IVY_IMAGE (ivy-raft:local), IVY_NET_PREFIX (172.29.71: the /24
# the network uses), IVY_SMOKE_PROJECT (compose project, default ivysmoke<pid>),
# IVY_SMOKE_BUILD (1), IVY_SMOKE_BUDGET_S (600), IVY_SMOKE_KEEP_LOGS (a
# directory to copy the CM logs to before teardown).
# Needs: docker (daemon reachable), docker-compose or the compose plugin, jq.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
COMPOSE_FILE="$HERE/docker-compose.yml"
export IVY_IMAGE=${IVY_IMAGE:-ivy-raft:local}
export IVY_NET_PREFIX=${IVY_NET_PREFIX:-172.29.71}
PROJECT=${IVY_SMOKE_PROJECT:-ivysmoke$$}
BUDGET_S=${IVY_SMOKE_BUDGET_S:-600}
P=$IVY_NET_PREFIX
CMS="$P.11:7101,$P.12:7101,$P.13:7101"
T0=$(date +%s.%N)
DEADLINE=$(( ${T0%.*} + BUDGET_S ))
WORK=""
TIMINGS=()
NET=""
COMPOSE=()
declare -A CID CLIENT_FD CLIENT_PID CLIENT_SEEN

log() { printf '[smoke %6.1fs] %s\n' "$(elapsed "$T0")" "$*" >&2; }
die() {
  printf '\nsmoke.sh: FAILED: %s\n\n' "$*" >&2
  exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timing() { TIMINGS+=("$(printf '%-44s %7.2f s' "$1" "$(awk -v a="$2" -v b="$(now)" 'BEGIN { print b - a }')")"); }
check_budget() {
  [ "$(date +%s)" -lt "$DEADLINE" ] || die "over the time budget of ${BUDGET_S} s (IVY_SMOKE_BUDGET_S)"
}

# ---- cleanup on every exit --------------------------------------------------
cleanup() {
  local rc=$? fd leftovers t
  set +eu
  trap - EXIT INT TERM
  for fd in "${CLIENT_FD[@]}"; do [ -n "$fd" ] && eval "exec $fd>&-" 2>/dev/null; done
  if [ "${#COMPOSE[@]}" -gt 0 ]; then
    if [ "$rc" -ne 0 ]; then
      log "failure: last CM logs"
      dc logs --no-color --tail 30 cm1 cm2 cm3 >&2 2>/dev/null
      for f in "$WORK"/client-*.out; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    fi
    if [ -n "${IVY_SMOKE_KEEP_LOGS:-}" ]; then
      mkdir -p "$IVY_SMOKE_KEEP_LOGS" && dc logs --no-color >"$IVY_SMOKE_KEEP_LOGS/cm.log" 2>&1
      cp "$WORK"/client-*.out "$IVY_SMOKE_KEEP_LOGS"/ 2>/dev/null
    fi
    leftovers=$(docker ps -aq --filter "label=ivy-smoke=$PROJECT")
    [ -n "$leftovers" ] && timeout 60 docker rm -f $leftovers >/dev/null 2>&1
    t=$(now)
    dc down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || log "docker-compose down failed"
    # Whatever the project left (a network still in use, a volume): say so, remove it.
    leftovers=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$leftovers" ] && { log "removing leftover containers"; docker rm -f $leftovers >/dev/null 2>&1; }
    leftovers=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$leftovers" ] && { log "removing leftover volumes"; docker volume rm -f $leftovers >/dev/null 2>&1; }
    leftovers=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
    [ -n "$leftovers" ] && { log "removing leftover networks"; docker network rm $leftovers >/dev/null 2>&1; }
    timing "teardown (down -v)" "$t"
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  echo >&2
  if [ "${#TIMINGS[@]}" -gt 0 ]; then
    echo "timings:" >&2
    printf '  %s\n' "${TIMINGS[@]}" >&2
  fi
  printf '  %-44s %7.2f s\n' "total" "$(elapsed "$T0")" >&2
  if [ "$rc" -eq 0 ]; then echo "smoke.sh: PASSED" >&2; else echo "smoke.sh: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ivy-smoke.XXXXXX")

# ---- preconditions: fail loudly -------------------------------------------
command -v docker >/dev/null || die "the docker CLI is not installed"
if ! timeout 20 docker info >/dev/null 2>"$WORK/docker-info.err"; then
  die "the Docker daemon does not answer ($(head -c 300 "$WORK/docker-info.err")): start it, or run as a user allowed to use it"
fi
command -v jq >/dev/null || die "jq is not installed (apt-get install jq)"
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "neither the compose plugin (docker compose) nor docker-compose is installed"
fi
log "compose: $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1), project $PROJECT, network $P.0/24"

dc() { timeout 120 "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$PROJECT" "$@"; }

# A subnet already in use makes `up` fail with an obscure "Pool overlaps"; say so first.
for n in $(docker network ls -q); do
  if docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$n" | grep -qw "$P.0/24"; then
    die "network $(docker network inspect -f '{{.Name}}' "$n") already uses $P.0/24: remove it or set IVY_NET_PREFIX"
  fi
done

# ---- helpers ----------------------------------------------------------------
cid() { echo "${CID[$1]}"; }

# status FROM_ID [ADDRS]: `ivy status` over ADDRS (default: all three nodes),
# run inside node FROM_ID's container (so it sees the network as that node
# does); prints the JSON. A node that is down costs its 1 s status timeout, so
# the failover waits ask the other two only.
status() {
  timeout 15 docker exec "$(cid "$1")" /usr/local/bin/ivy status --cm "${2:-$CMS}" --json 2>/dev/null || true
}
others() { local i a=(); for i in 1 2 3; do [ "$i" = "$1" ] || a+=("$P.1$i:7101"); done; (IFS=,; echo "${a[*]}"); }

# wait_until DESC SECONDS CMD...: run CMD every 0.2 s until it succeeds.
wait_until() {
  local desc=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    check_budget
    if "$@"; then return 0; fi
    sleep 0.2
  done
  die "$desc: not within $secs s"
}

# leader_seen FROM_ID [NOT_ID] [MIN_TERM]: a leader is reported (not NOT_ID,
# term >= MIN_TERM); sets LEADER and LTERM.
leader_seen() {
  local s
  if [ -n "${2:-}" ]; then s=$(status "$1" "$(others "$2")"); else s=$(status "$1"); fi
  [ -n "$s" ] || return 1
  read -r LEADER LTERM < <(jq -r '[.cm[] | select(.serving == true)] | first | "\(.id // "") \(.term // "")"' <<<"$s")
  [ -n "$LEADER" ] && [ "$LEADER" != "${2:-}" ] && [ "$LTERM" -ge "${3:-0}" ]
}

# converged FROM_ID: all three reachable, one leader, same term, same applied index.
converged() {
  local s
  s=$(status "$1")
  [ -n "$s" ] || return 1
  jq -e '[.cm[] | select(.reachable)] as $r
         | ($r | length) == 3
         and ([$r[] | select(.serving)] | length) == 1
         and ([$r[].term] | unique | length) == 1
         and ([$r[].applied_index] | unique | length) == 1' <<<"$s" >/dev/null
}

# One-shot client: run_client NAME IP <<< "commands"; the JSON lines go to $WORK/client-NAME.out.
run_client() {
  local name=$1 ip=$2
  timeout 60 docker run -i --rm --name "$PROJECT-$name" --label "ivy-smoke=$PROJECT" \
    --network "$NET" --ip "$ip" -e IVY_LISTEN="$ip:7201" -e IVY_CM="$CMS" \
    --read-only --cap-drop ALL "$IVY_IMAGE" client --json >"$WORK/client-$name.out" 2>"$WORK/client-$name.err" \
    || die "client $name exited with an error: $(tail -n 5 "$WORK/client-$name.err")"
}

# Long-lived clients: start_client NAME IP; send NAME LINE; expect NAME JQ_TEST.
start_client() {
  local name=$1 ip=$2 fifo="$WORK/client-$1.in" fd
  mkfifo "$fifo"
  timeout "$BUDGET_S" docker run -i --rm --name "$PROJECT-$name" --label "ivy-smoke=$PROJECT" \
    --network "$NET" --ip "$ip" -e IVY_LISTEN="$ip:7201" -e IVY_CM="$CMS" \
    --read-only --cap-drop ALL "$IVY_IMAGE" client --json <"$fifo" >"$WORK/client-$name.out" 2>"$WORK/client-$name.err" &
  CLIENT_PID[$name]=$!
  exec {fd}>"$fifo"
  CLIENT_FD[$name]=$fd
  CLIENT_SEEN[$name]=0
  expect "$name" '.event == "ready"'
}
send() { echo "$2" >&"${CLIENT_FD[$1]}"; }
# expect NAME JQ_TEST [SECONDS]: the next answer line of NAME passes JQ_TEST.
expect() {
  local name=$1 test=$2 secs=${3:-30} n line i
  n=$(( CLIENT_SEEN[$name] + 1 ))
  for ((i = 0; i < secs * 10; i++)); do
    line=$(sed -n "${n}p" "$WORK/client-$name.out")
    [ -n "$line" ] && break
    kill -0 "${CLIENT_PID[$name]}" 2>/dev/null || die "client $name exited: $(tail -n 5 "$WORK/client-$name.err")"
    sleep 0.1
  done
  [ -n "$line" ] || die "client $name: no answer within $secs s (waiting for: $test)"
  CLIENT_SEEN[$name]=$n
  jq -e "$test" <<<"$line" >/dev/null || die "client $name: answer $line fails: $test"
  log "client $name: $line"
}
# op NAME "COMMAND" JQ_TEST: send, then expect.
op() { send "$1" "$2"; expect "$1" "$3"; }
stop_client() {
  local name=$1 i
  op "$name" quit '.op == "quit" and .ok'
  eval "exec ${CLIENT_FD[$name]}>&-"
  CLIENT_FD[$name]=""
  for ((i = 0; i < 100; i++)); do kill -0 "${CLIENT_PID[$name]}" 2>/dev/null || break; sleep 0.1; done
  kill -0 "${CLIENT_PID[$name]}" 2>/dev/null && die "client $name did not exit after quit"
  wait "${CLIENT_PID[$name]}" || die "client $name exited non-zero"
}

# ---- 1. image ---------------------------------------------------------------
t=$(now)
if [ "${IVY_SMOKE_BUILD:-1}" = 0 ] && docker image inspect "$IVY_IMAGE" >/dev/null 2>&1; then
  log "reusing image $IVY_IMAGE (IVY_SMOKE_BUILD=0)"
else
  log "building $IVY_IMAGE"
  IVY_IMAGE=$IVY_IMAGE "$ROOT/deploy/docker/build.sh" >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >&2; die "image build failed"; }
  grep '^build.sh: ' "$WORK/build.log" | grep -v staged | sed 's/^/  /' >&2
fi
timing "image build" "$t"
DEADLINE=$(( $(date +%s) + BUDGET_S ))   # the budget counts from here (a first cargo build takes minutes)
timeout 30 docker run --rm "$IVY_IMAGE" --version >/dev/null || die "the image does not run: docker run --rm $IVY_IMAGE --version"

# ---- 2. cluster up, leader --------------------------------------------------
dc config -q || die "docker-compose config rejects $COMPOSE_FILE"
t=$(now)
t_up=$t
dc up -d cm1 cm2 cm3 >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; die "docker-compose up failed"; }
timing "cluster up (up -d returned)" "$t"
for i in 1 2 3; do
  CID[$i]=$(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=cm$i")
  [ -n "${CID[$i]}" ] || die "no container for cm$i after up"
done
NET=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid 1)")
[ -n "$NET" ] || die "cannot find the network of cm1"
log "network $NET"
t=$(now)
wait_until "a leader elected after up" 60 leader_seen 1
timing "leader elected (after up returned)" "$t"
timing "leader elected (from the start of up)" "$t_up"
log "leader: node $LEADER, term $LTERM"
wait_until "all three nodes agree after up" 30 converged 1
for i in 1 2 3; do
  [ "$(docker inspect -f '{{.Config.User}}' "$(cid "$i")")" = "10001:10001" ] || die "cm$i does not run as 10001"
done

# ---- 3. one-shot client -----------------------------------------------------
t=$(now)
printf 'write S1 a\nread S1\nwrite S2 b\nread S2\nquit\n' | run_client c1 "$P.21"
out="$WORK/client-c1.out"
[ "$(wc -l <"$out")" -eq 6 ] || die "client c1: expected 6 answer lines, got: $(cat "$out")"
sed -n 1p "$out" | jq -e '.event == "ready"' >/dev/null || die "client c1: no ready line"
sed -n 2p "$out" | jq -e '.op == "write" and .ok' >/dev/null || die "client c1: write S1 failed: $(sed -n 2p "$out")"
sed -n 3p "$out" | jq -e '.op == "read" and .ok and .value == "a"' >/dev/null || die "client c1: read S1: $(sed -n 3p "$out")"
sed -n 4p "$out" | jq -e '.op == "write" and .ok' >/dev/null || die "client c1: write S2 failed: $(sed -n 4p "$out")"
sed -n 5p "$out" | jq -e '.op == "read" and .ok and .value == "b"' >/dev/null || die "client c1: read S2: $(sed -n 5p "$out")"
sed -n 6p "$out" | jq -e '.op == "quit" and .ok' >/dev/null || die "client c1: quit: $(sed -n 6p "$out")"
timing "one-shot client (2 writes, 2 reads, quit)" "$t"

# The compose file's own client service (profile "client", static address .20).
t=$(now)
printf 'write S3 c\nread S3\nquit\n' | dc run --rm -T client client --json >"$WORK/client-svc.out" 2>"$WORK/client-svc.err" \
  || die "docker-compose run client failed: $(tail -n 5 "$WORK/client-svc.err")"
grep -q '"listen":"'"$P"'.20:7201"' "$WORK/client-svc.out" || die "the client service did not serve on $P.20: $(head -n 1 "$WORK/client-svc.out")"
[ "$(jq -s '[.[] | select(.ok == true)] | length' "$WORK/client-svc.out")" -eq 3 ] \
  || die "the client service's write/read/quit did not all succeed: $(cat "$WORK/client-svc.out")"
timing "compose client service (run --rm)" "$t"

# ---- 4. two clients, pages across containers -------------------------------
t=$(now)
start_client A "$P.22"
start_client B "$P.23"
op A 'write P1 from-a' '.op == "write" and .ok'
op B 'read P1' '.ok and .value == "from-a" and (.local | not)'
op B 'write P1 from-b' '.op == "write" and .ok'
op A 'read P1' '.ok and .value == "from-b" and (.local | not)'
timing "clients A, B: page moves, invalidation" "$t"

# ---- 5. kill the leader -----------------------------------------------------
OLD=$LEADER OLD_TERM=$LTERM
SURVIVOR=$(( OLD % 3 + 1 ))
log "docker kill cm$OLD (the leader)"
t=$(now)
timeout 30 docker kill "$(cid "$OLD")" >/dev/null || die "docker kill cm$OLD failed"
wait_until "a new leader after killing cm$OLD" 30 leader_seen "$SURVIVOR" "$OLD" "$((OLD_TERM + 1))"
timing "new leader after docker kill" "$t"
log "new leader: node $LEADER, term $LTERM"
restarted=$(docker inspect -f '{{.State.Running}}' "$(cid "$OLD")")
log "cm$OLD running again by itself (restart policy): $restarted"
t=$(now)
op A 'write P2 during-kill' '.op == "write" and .ok'
op B 'read P2' '.ok and .value == "during-kill"'
op B 'write P1 after-kill' '.op == "write" and .ok'
op A 'read P1' '.ok and .value == "after-kill"'
timing "clients after the kill (2 writes, 2 reads)" "$t"
t=$(now)
if [ "$restarted" != true ]; then
  dc start "cm$OLD" >/dev/null 2>&1 || die "docker-compose start cm$OLD failed"
fi
wait_until "cm$OLD back and caught up" 60 converged "$SURVIVOR"
timing "killed node restarted and caught up" "$t"

# ---- 6. partition the leader ------------------------------------------------
wait_until "a leader before the partition" 30 leader_seen 1
CUT=$LEADER CUT_TERM=$LTERM
SURVIVOR=$(( CUT % 3 + 1 ))
CUT_IP="$P.1$CUT"
log "docker network disconnect cm$CUT (the leader, $CUT_IP)"
t=$(now)
timeout 30 docker network disconnect "$NET" "$(cid "$CUT")" || die "docker network disconnect cm$CUT failed"
wait_until "a new leader on the majority side" 30 leader_seen "$SURVIVOR" "$CUT" "$((CUT_TERM + 1))"
timing "new leader after network disconnect" "$t"
log "majority leader: node $LEADER, term $LTERM"
log "cm$CUT's own view while cut off: $(timeout 15 docker exec "$(cid "$CUT")" /usr/local/bin/ivy status --cm 127.0.0.1:7101 --json 2>/dev/null | jq -c '.cm[0] | {id, role, term, leader}')"
t=$(now)
op A 'write P3 during-partition' '.op == "write" and .ok'
op B 'read P3' '.ok and .value == "during-partition"'
timing "clients during the partition" "$t"
t=$(now)
timeout 30 docker network connect --ip "$CUT_IP" --alias "cm$CUT" "$NET" "$(cid "$CUT")" \
  || die "docker network connect cm$CUT failed"
wait_until "cm$CUT back in the cluster after reconnect" 60 converged "$SURVIVOR"
timing "reconnected node caught up" "$t"

# ---- 7. end -----------------------------------------------------------------
# The healthcheck runs `ivy health --service ivy.Manager` in each container:
# every node of a working cluster, leader and followers, turns healthy.
all_healthy() {
  local i
  for i in 1 2 3; do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$i")")" = healthy ] || return 1
  done
}
t=$(now)
wait_until "all three nodes reported healthy by their healthchecks" 60 all_healthy
timing "every container healthy" "$t"
for i in 1 2 3; do
  timeout 15 docker exec "$(cid "$i")" /usr/local/bin/ivy health --service ivy.Manager >/dev/null \
    || die "cm$i: ivy health --service ivy.Manager is not SERVING"
done
op A 'read P3' '.ok and .value == "during-partition"'
stop_client A
stop_client B
s=$(status 1)
log "final status: $s"
jq -e '.ok and ([.cm[].clients] | unique == [0])' <<<"$s" >/dev/null \
  || die "after both clients quit, the nodes should report 0 clients: $s"
log "all checks passed; tearing down"
