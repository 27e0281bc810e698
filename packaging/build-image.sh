#!/usr/bin/env bash
# Builds the trainwatch container image offline: a statically linked binary in an image
# FROM scratch, tagged trainwatch:<version> and trainwatch:latest.
#
#   packaging/build-image.sh            # build and tag
#   IMAGE=registry.local/trainwatch packaging/build-image.sh
#
# No base image is pulled. The binary links glibc statically (crt-static); the image also
# carries the build host's glibc runtime (libc, libm, the loader) so that the `nvidia-smi`
# the NVIDIA container runtime mounts in can run. Everything else trainwatch needs is inside
# the binary: TLS roots, SQLite, the DNS resolver.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-trainwatch}"
arch="$(uname -m)"
target="${arch}-unknown-linux-gnu"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

echo "== static binary ($target)" >&2
# --target keeps crt-static off build scripts and proc-macros, which must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --target-dir target/static >&2
bin="target/static/$target/release/trainwatch"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "FATAL: $bin is dynamically linked:" >&2
  ldd "$bin" >&2
  exit 1
fi

ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" \
  "$ctx/rootfs/var/lib/trainwatch"
chmod 1777 "$ctx/rootfs/tmp"
cp "$bin" "$ctx/rootfs/usr/local/bin/trainwatch"
# Line tables are for the developer's build; the image is a quarter of the size without them.
if command -v strip >/dev/null; then strip --strip-debug "$ctx/rootfs/usr/local/bin/trainwatch"; fi
# The glibc runtime of the host that built the binary, for programs mounted in at run time.
loader="$(ldd /bin/true | awk '/ld-linux/ {print $1}')"
libdir="$(dirname "$(ldd /bin/true | awk '/libc.so/ {print $3}')")"
mkdir -p "$ctx/rootfs$(dirname "$loader")" "$ctx/rootfs$libdir"
cp -L "$loader" "$ctx/rootfs$loader"
for lib in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
  [ -e "$libdir/$lib" ] && cp -L "$libdir/$lib" "$ctx/rootfs$libdir/$lib"
done
printf 'root:x:0:0:root:/var/lib/trainwatch:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
  >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
printf 'hosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"

revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    TRAINWATCH_DB=/var/lib/trainwatch/trainwatch.db
WORKDIR /var/lib/trainwatch
VOLUME ["/var/lib/trainwatch"]
EXPOSE 9750
# SIGTERM (docker stop) is a clean shutdown: stop reading, commit, checkpoint, exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["trainwatch", "health", "--ingestor", "--max-age", "2m"]
LABEL org.opencontainers.image.title="trainwatch" \
      org.opencontainers.image.version="$version" \
      org.opencontainers.image.revision="$revision" \
      trainwatch.follow="false"
ENTRYPOINT ["trainwatch"]
CMD ["watch", "--listen", "0.0.0.0:9750"]
DOCKERFILE

echo "== image $image:$version" >&2
docker build --quiet -t "$image:$version" -t "$image:latest" "$ctx" >&2
docker image inspect "$image:$version" --format '{{.Id}} {{.Size}}' >&2
echo "$image:$version"
