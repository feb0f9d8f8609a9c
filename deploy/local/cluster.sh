#!/usr/bin/env bash
# Start, stop, restart or inspect a local 3-node CM cluster in the background.
#
#   deploy/local/cluster.sh start          build (release) if needed, start cm 1-3,
#                                          wait until a leader serves
#   deploy/local/cluster.sh stop           stop the followers, then the leader
#                                          (SIGTERM, SIGKILL after 5 s)
#   deploy/local/cluster.sh restart N      stop node N and start it again
#   deploy/local/cluster.sh kill N         kill -9 node N (a crash)
#   deploy/local/cluster.sh status         ivy status
#
# Logs (plain text, no colour codes) and pid files go to $IVY_RUN_DIR (default
# deploy/local/run); data to data/cm-N. Every node listens on loopback only
# (127.0.0.1:7101-7103) unless IVY_PEERS says otherwise:
#   IVY_PEERS=1=127.0.0.1:6101,2=127.0.0.1:6102,3=127.0.0.1:6103 deploy/local/cluster.sh start
# (the node ids are IVY_PEERS's; `status` asks the same addresses, or IVY_CM if
# set). Choose ports below 32768: Linux hands out 32768-60999 as ephemeral
# ports, and a node restarted on one may find it taken by an outgoing connection.
# With IVY_CERTS_DIR (made by `ivy certs init --dir DIR`), node N runs with mutual
# TLS (DIR/node-N.crt) and the cluster token (DIR/token); status uses client-1.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN_DIR=${IVY_RUN_DIR:-deploy/local/run}
IVY=${IVY_BIN:-target/release/ivy}
PEERS=${IVY_PEERS:-1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103}
export IVY_PEERS=$PEERS
export IVY_CM=${IVY_CM:-$(tr ',' '\n' <<<"$PEERS" | cut -d= -f2 | paste -sd, -)}
IDS=$(tr ',' '\n' <<<"$PEERS" | cut -d= -f1 | tr '\n' ' ')
# How long a node may take to bind and open its store, and the cluster to elect a leader.
READY_WAIT_S=${IVY_READY_WAIT_S:-10}
LEADER_WAIT_S=${IVY_LEADER_WAIT_S:-20}
mkdir -p "$RUN_DIR"

die() { echo "cluster.sh: $*" >&2; exit 1; }

build() {
  [ -x "$IVY" ] || cargo build --release
}

running() {
  local pidfile="$RUN_DIR/cm-$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# secure ROLE N: with IVY_CERTS_DIR, exports the TLS and token variables of
# ROLE-N (node-1, client-1).
secure() {
  [ -n "${IVY_CERTS_DIR:-}" ] || return 0
  export IVY_TLS_CA="$IVY_CERTS_DIR/ca.crt" IVY_TOKEN_FILE="$IVY_CERTS_DIR/token"
  export IVY_TLS_CERT="$IVY_CERTS_DIR/$1-$2.crt" IVY_TLS_KEY="$IVY_CERTS_DIR/$1-$2.key"
}

# start_node N: start node N and wait for its ready line; a node that exits
# first (a port in use, a data dir in use) is an error showing its log.
start_node() {
  local id=$1 log="$RUN_DIR/cm-$1.log" ready="$RUN_DIR/cm-$1.ready" pid i
  if running "$id"; then
    echo "cm $id already running (pid $(cat "$RUN_DIR/cm-$id.pid"))"
    return
  fi
  : >"$ready"
  secure node "$id"
  IVY_LOG_FORMAT=${IVY_LOG_FORMAT:-text} nohup "$IVY" cm --id "$id" --json >"$ready" 2>>"$log" &
  pid=$!
  echo "$pid" >"$RUN_DIR/cm-$id.pid"
  for ((i = 0; i < READY_WAIT_S * 10; i++)); do
    if grep -q '"event":"ready"' "$ready" 2>/dev/null; then
      echo "cm $id serving (pid $pid, log $log)"
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$RUN_DIR/cm-$id.pid"
      echo "cm $id exited at start; the end of $log:" >&2
      tail -n 5 "$log" >&2
      die "cm $id did not start"
    fi
    sleep 0.1
  done
  die "cm $id gave no ready line within ${READY_WAIT_S} s (see $log)"
}

# await_leader: until `ivy status` finds a leader, within LEADER_WAIT_S.
await_leader() {
  local i
  for ((i = 0; i < LEADER_WAIT_S * 5; i++)); do
    if "$IVY" status >/dev/null 2>&1; then
      echo "leader: node $(leader_id)"
      return
    fi
    sleep 0.2
  done
  "$IVY" status >&2 || true
  die "no leader within ${LEADER_WAIT_S} s"
}

# leader_id: the id `ivy status` reports leading, or nothing.
leader_id() {
  "$IVY" status --json 2>/dev/null | grep -o '"id":[0-9]*,"role":"leader"' | grep -o '[0-9]*' | head -n 1 || true
}

stop_node() {
  local id=$1 signal=${2:-TERM}
  local pidfile="$RUN_DIR/cm-$id.pid"
  if ! running "$id"; then
    rm -f "$pidfile"
    return
  fi
  local pid
  pid=$(cat "$pidfile")
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "cm $id stopped"
}

# stop_all: followers first, the leader last, so the cluster never holds an
# election among nodes about to stop.
stop_all() {
  local leader id
  leader=$(leader_id)
  for id in $IDS; do [ "$id" = "$leader" ] || stop_node "$id"; done
  [ -n "$leader" ] && stop_node "$leader"
  return 0
}

case "${1:-}" in
  start) build; for id in $IDS; do start_node "$id"; done; await_leader ;;
  stop) stop_all ;;
  restart) build; stop_node "${2:?node id}"; start_node "$2"; await_leader ;;
  kill) stop_node "${2:?node id}" KILL ;;
  status) build; secure client 1; "$IVY" status ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
