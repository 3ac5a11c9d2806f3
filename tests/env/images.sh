#!/usr/bin/env bash
# Builds the Docker images the tests use, without any image registry, and caches them by tag.
#
#   infrapilot-test/nginx:local     Debian's nginx, following the official `nginx` image's contract
#   infrapilot-test/postgres:local  Debian's PostgreSQL 15, following the official `postgres` image's contract
#   infrapilot-test/app:local       a static HTTP server that answers with its container's name
#
# Each image carries the hash of its recipe as a label; an image whose label matches the current
# recipe is reused, so a second run costs nothing. Set INFRAPILOT_TEST_REBUILD_IMAGES=1 to force.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

IMAGES=$ROOT/tests/images
NGINX_TAG=infrapilot-test/nginx:local
POSTGRES_TAG=infrapilot-test/postgres:local
APP_TAG=infrapilot-test/app:local

recipe_hash() { # files... -> one hash over their names and contents, and this script
  (cd "$ROOT" && sha256sum "$@" tests/env/images.sh) | sha256sum | cut -c1-16
}

image_label() { # tag label -> the label's value, or nothing when the image is missing
  docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

image_is_current() { # tag hash
  [ "${INFRAPILOT_TEST_REBUILD_IMAGES:-0}" != 1 ] && [ "$(image_label "$1" infrapilot.io/recipe)" = "$2" ]
}

# The Debian mirror and suite this machine's apt already uses, so that debootstrap fetches from
# the same place apt does; debootstrap's own default applies when none is configured.
debian_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
  printf '%s' "$uri"
}
debian_suite() { (. /etc/os-release && printf '%s' "${VERSION_CODENAME:-bookworm}"); }

# A minimal Debian with the given packages, imported as TAG; reused while the package list and
# this script are unchanged. The Dockerfiles build on it.
rootfs_image() { # name packages tag
  local name=$1 packages=$2 tag=$3
  local hash; hash=$(printf '%s %s' "$packages" "$(debian_suite)" | cat - "$ROOT/tests/env/images.sh" | sha256sum | cut -c1-16)
  if image_is_current "$tag" "$hash"; then return; fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (tests/env/provision.sh does it)"
  log "debootstrapping $name with $packages (about a minute)"
  local dir=$STATE/rootfs/$name
  as_root rm -rf "$dir"; mkdir -p "$STATE/rootfs" "$STATE/logs"
  # shellcheck disable=SC2046
  if ! as_root debootstrap --variant=minbase --include="$packages" "$(debian_suite)" "$dir" $(debian_mirror) \
      >"$STATE/logs/debootstrap-$name.log" 2>&1; then
    tail -n 20 "$STATE/logs/debootstrap-$name.log" >&2
    die "debootstrap of the $name image failed (log: $STATE/logs/debootstrap-$name.log)"
  fi
  # Slim the image: documentation, locales and package lists are never used inside it.
  as_root rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
    "$dir"/usr/share/locale/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
    "$dir"/var/cache/apt/archives/*.deb
  as_root tar -C "$dir" -c . | docker import --change "LABEL infrapilot.io/recipe=$hash" - "$tag" >/dev/null
  as_root rm -rf "$dir"
}

# Builds tests/images/NAME/Dockerfile from CONTEXT. Docker 20.10 has no BuildKit without the
# buildx plugin, so the classic builder is used; the images it starts from are local.
docker_build() { # name context tag hash
  DOCKER_BUILDKIT=0 docker build --quiet --label "infrapilot.io/recipe=$4" --label infrapilot.io/test-image=true \
    -f "$ROOT/tests/images/$1/Dockerfile" -t "$3" "$2" >"$STATE/logs/build-$1.log" 2>&1 \
    || { tail -n 20 "$STATE/logs/build-$1.log" >&2; die "building $3 failed"; }
  log "built $3 ($(docker image inspect --format '{{.Size}}' "$3" | numfmt --to=iec))"
}

build_nginx() {
  rootfs_image nginx nginx-light,ca-certificates infrapilot-test/nginx-rootfs:local
  local hash; hash=$(recipe_hash tests/images/nginx/*)-$(image_label infrapilot-test/nginx-rootfs:local infrapilot.io/recipe)
  if image_is_current "$NGINX_TAG" "$hash"; then log "reusing $NGINX_TAG"; return; fi
  docker_build nginx "$IMAGES/nginx" "$NGINX_TAG" "$hash"
}

build_postgres() {
  rootfs_image postgres postgresql-15,zstd infrapilot-test/postgres-rootfs:local
  local hash; hash=$(recipe_hash tests/images/postgres/*)-$(image_label infrapilot-test/postgres-rootfs:local infrapilot.io/recipe)
  if image_is_current "$POSTGRES_TAG" "$hash"; then log "reusing $POSTGRES_TAG"; return; fi
  docker_build postgres "$IMAGES/postgres" "$POSTGRES_TAG" "$hash"
}

build_app() {
  local hash; hash=$(recipe_hash tests/images/app/Cargo.toml tests/images/app/Dockerfile tests/images/app/src/*)
  if image_is_current "$APP_TAG" "$hash"; then log "reusing $APP_TAG"; return; fi
  # Linked statically (glibc allows it for a program that resolves no names), so the binary is
  # the whole image.
  (cd "$ROOT" && cargo rustc --quiet --release -p infrapilot-test-app --bin infrapilot-test-app \
    -- -C target-feature=+crt-static)
  local target; target=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  local context=$STATE/rootfs/app
  rm -rf "$context"; mkdir -p "$context"
  cp "$target/release/infrapilot-test-app" "$context/app"
  docker_build app "$context" "$APP_TAG" "$hash"
  rm -rf "$context"
}

main() {
  command -v docker >/dev/null || die "docker is missing: the tests need a running Docker engine"
  docker info >/dev/null 2>&1 || die "the Docker engine does not answer: start it (e.g. 'service docker start')"
  mkdir -p "$STATE"
  # The two debootstraps are mostly download and dpkg time: run them side by side.
  mkdir -p "$STATE/logs"
  # The two debootstraps are mostly download and dpkg time: run them side by side. Each build
  # runs in its own subshell with errexit in force (a function called from `||` would lose it).
  local pids=() failed=0
  build_nginx & pids+=($!)
  build_postgres & pids+=($!)
  build_app & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ $failed = 0 ] || die "building the test images failed"
}

main "$@"
