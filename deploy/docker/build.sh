#!/usr/bin/env bash
# Build the ivy-raft container image FROM scratch.
#
#   deploy/docker/build.sh                  cargo build --release, then docker build
#   IVY_BIN=path/to/ivy deploy/docker/build.sh      use an already built binary
#   IVY_IMAGE=name:tag deploy/docker/build.sh       tag (default ivy-raft:local)
#   IVY_STRIP=1 deploy/docker/build.sh               strip the staged copy (about 4 MB
#                                                    less; panics lose symbol names)
#
# Stages into $IVY_DOCKER_CONTEXT (default target/docker-context):
#   rootfs/usr/local/bin/ivy        the binary
#   rootfs/<path of each library>   every shared library `ldd` lists, the dynamic
#                                   loader included, at the same absolute path
#   rootfs/etc/{passwd,group,nsswitch.conf}   root and ivy (10001:10001)
#   data/, tmp/                     empty directories, owned by 10001 in the image
# then runs `docker build` with deploy/docker/Dockerfile on that directory and
# prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IVY_IMAGE:-ivy-raft:local}
CONTEXT=${IVY_DOCKER_CONTEXT:-target/docker-context}

die() { echo "build.sh: error: $*" >&2; exit 1; }

command -v docker >/dev/null || die "the docker CLI is not installed"
timeout 20 docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (is it running? may this user use it?)"
command -v ldd >/dev/null || die "ldd is not installed (it lists the libraries the binary links)"

if [ -n "${IVY_BIN:-}" ]; then
  [ -x "$IVY_BIN" ] || die "IVY_BIN=$IVY_BIN is not an executable file"
  BIN=$IVY_BIN
else
  start=$(date +%s)
  cargo build --release --bin ivy
  echo "build.sh: cargo build --release: $(( $(date +%s) - start )) s"
  BIN=target/release/ivy
fi
file_out=$(file -b "$BIN" 2>/dev/null || true)
case "$file_out" in
  *ELF*) ;;
  "") ;;  # no `file`: ldd below still fails on a non-ELF
  *) die "$BIN is not an ELF binary ($file_out)" ;;
esac

rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/rootfs/usr/local/bin" "$CONTEXT/rootfs/etc" "$CONTEXT/data" "$CONTEXT/tmp"
install -m 0755 "$BIN" "$CONTEXT/rootfs/usr/local/bin/ivy"
if [ "${IVY_STRIP:-0}" = 1 ]; then
  strip --strip-unneeded "$CONTEXT/rootfs/usr/local/bin/ivy" || die "strip failed"
fi

# Every library ldd resolves ("name => /path (addr)") and the loader ("/path (addr)");
# linux-vdso has no file. A "not found" line is an error.
ldd_out=$(ldd "$BIN") || die "ldd $BIN failed: is it a dynamically linked ELF for this machine?"
if grep -q "not found" <<<"$ldd_out"; then
  die "ldd cannot resolve every library of $BIN:"$'\n'"$ldd_out"
fi
libs=$(awk '/=> \// { print $3; next } /^[[:space:]]*\// { print $1 }' <<<"$ldd_out" | sort -u)
[ -n "$libs" ] || die "ldd listed no library for $BIN (a static binary needs no build.sh staging; adapt the Dockerfile)"
for lib in $libs; do
  mkdir -p "$CONTEXT/rootfs$(dirname "$lib")"
  cp -L "$lib" "$CONTEXT/rootfs$lib"   # -L: the file, not the symlink
  echo "build.sh: staged $lib"
done

cat >"$CONTEXT/rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
ivy:x:10001:10001:ivy-raft:/data:/sbin/nologin
PASSWD
cat >"$CONTEXT/rootfs/etc/group" <<'GROUP'
root:x:0:
ivy:x:10001:
GROUP
# glibc resolves host names (peer DNS names in Compose and Kubernetes) through
# /etc/hosts first, then DNS; both modules are built into glibc >= 2.34.
echo "hosts: files dns" >"$CONTEXT/rootfs/etc/nsswitch.conf"
chmod 0644 "$CONTEXT/rootfs/etc/passwd" "$CONTEXT/rootfs/etc/group" "$CONTEXT/rootfs/etc/nsswitch.conf"
chmod 0700 "$CONTEXT/data"
chmod 1777 "$CONTEXT/tmp"
cp deploy/docker/Dockerfile "$CONTEXT/Dockerfile"

start=$(date +%s)
timeout 600 docker build --tag "$IMAGE" "$CONTEXT"
echo "build.sh: docker build: $(( $(date +%s) - start )) s"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "build.sh: built $IMAGE, $size bytes ($(( size / 1024 / 1024 )) MiB)"
