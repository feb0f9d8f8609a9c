#!/usr/bin/env bash
# Start, stop, restart or inspect a local 3-node CM cluster in the background.
#
#   deploy/local/cluster.sh start          build (release) if needed, start cm 1-3
#   deploy/local/cluster.sh stop           stop every node (SIGTERM, then SIGKILL)
#   deploy/local/cluster.sh restart N      stop node N and start it again
#   deploy/local/cluster.sh kill N         kill -9 node N (a crash)
#   deploy/local/cluster.sh status         ivy status
#
# Logs and pid files go to $IVY_RUN_DIR (default deploy/local/run); data to data/cm-N.
# Every node listens on loopback only (127.0.0.1:7101-7103).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN_DIR=${IVY_RUN_DIR:-deploy/local/run}
IVY=${IVY_BIN:-target/release/ivy}
mkdir -p "$RUN_DIR"

build() {
  [ -x "$IVY" ] || cargo build --release
}

running() {
  local pidfile="$RUN_DIR/cm-$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start_node() {
  local id=$1
  if running "$id"; then
    echo "cm $id already running (pid $(cat "$RUN_DIR/cm-$id.pid"))"
    return
  fi
  RUST_LOG=${RUST_LOG:-info} nohup "$IVY" cm --id "$id" >>"$RUN_DIR/cm-$id.log" 2>&1 &
  echo $! >"$RUN_DIR/cm-$id.pid"
  echo "cm $id started (pid $!, log $RUN_DIR/cm-$id.log)"
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

case "${1:-}" in
  start) build; for id in 1 2 3; do start_node "$id"; done ;;
  stop) for id in 1 2 3; do stop_node "$id"; done ;;
  restart) build; stop_node "${2:?node id}"; start_node "$2" ;;
  kill) stop_node "${2:?node id}" KILL ;;
  status) build; "$IVY" status ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
