#!/usr/bin/env bash
# Builds, without a container registry, every image `docker compose --profile cpu` needs, under the
# names deploy/offline/compose.offline.yml gives them. The two base images are made once and then
# reused (DAE_OFFLINE_REBUILD=1 makes them again); the others are rebuilt on every run from the
# engine's layer cache, so a change to a Dockerfile or to the sources is picked up and an unchanged
# image costs seconds. Run from the repository root:
#
#   deploy/offline/images.sh          then:  docker compose -f docker-compose.yml \
#                                              -f deploy/offline/compose.offline.yml --profile cpu up -d
#
# What stands in for what (docs/deploy.md, "Without a container registry"):
#   dae-offline/debian:bookworm             debootstrap --variant=minbase bookworm + this machine's CAs
#   dae-offline/python:3.11-slim-bookworm   Debian's Python 3.11 on it          (for python:3.11-slim)
#   dae-offline/kafka:4.1.1                 deploy/kafka/pom.xml's jars on Java 17      (apache/kafka)
#   dae-offline/prometheus:bookworm         Debian's prometheus package              (prom/prometheus)
#   dae-offline/alertmanager:bookworm       Debian's prometheus-alertmanager       (prom/alertmanager)
#   dae-stream:cpu                          deploy/docker/Dockerfile.cpu, built by compose from PyPI
# Grafana has no Debian package: the offline override leaves it out.
#
# Needs: a Docker engine, `docker compose` (deploy/offline/compose-plugin.sh), debootstrap and root
# (for the base image), Maven and Java (for the Kafka jars; deploy/kafka needs them too).
# Environment: DAE_DEBIAN_MIRROR (default http://deb.debian.org/debian), PYPI_INDEX_URL (default
# https://pypi.org/simple, read by the override), DAE_OFFLINE_CACHE (default ~/.cache/dae/offline),
# DAE_OFFLINE_REBUILD.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/deploy/offline"
mirror="${DAE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${DAE_OFFLINE_CACHE:-$HOME/.cache/dae/offline}"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/deploy/kafka/pom.xml")"
export DOCKER_BUILDKIT=0  # no buildx here, and BuildKit would look the base images up in a registry

BASE=dae-offline/debian:bookworm
PYTHON=dae-offline/python:3.11-slim-bookworm
KAFKA="dae-offline/kafka:$kafka_version"
PROMETHEUS=dae-offline/prometheus:bookworm
ALERTMANAGER=dae-offline/alertmanager:bookworm
DAE=dae-stream:cpu

log() { echo "images: $*" >&2; }
have() { [[ "${DAE_OFFLINE_REBUILD:-}" != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }
timed() {  # timed NAME COMMAND...: build, then say how long it took
  local t0=$SECONDS
  "${@:2}"
  log "$1 built in $((SECONDS - t0)) s"
}

build_base() {
  command -v debootstrap >/dev/null || { log "debootstrap is needed for $BASE (apt-get install debootstrap)"; exit 1; }
  [[ "$(id -u)" == 0 ]] || { log "debootstrap needs root for $BASE"; exit 1; }
  local rootfs
  rootfs="$(mktemp -d)"
  log "debootstrap bookworm from $mirror (about 90 s)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
  # HTTPS from the containers may pass a proxy with its own CA: trust what this machine trusts.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive' \
    --change 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
}

build_kafka() {
  local ctx="$cache/kafka-$kafka_version"
  if [[ ! -f "$ctx/.libs-complete" ]]; then
    command -v mvn >/dev/null || { log "Maven (mvn) is needed for the Kafka jars"; exit 1; }
    rm -rf "$ctx" && mkdir -p "$ctx"
    mvn -q -B -f "$root/deploy/kafka/pom.xml" -P image dependency:copy-dependencies \
        -DoutputDirectory="$ctx/libs" -DincludeScope=runtime >&2
    touch "$ctx/.libs-complete"
  fi
  rm -rf "$ctx/bin" && cp -r "$here/kafka/." "$ctx/"
  docker build -q --build-arg BASE_IMAGE="$BASE" -t "$KAFKA" "$ctx" >/dev/null
}

build_dir() {  # build_dir IMAGE DIR
  docker build -q --build-arg BASE_IMAGE="$BASE" -t "$1" "$here/$2" >/dev/null
}

build_dae() {
  # Through compose, with the main file's build section (context, Dockerfile) and the override's
  # arguments (the local Python base, torch from PyPI). One service: the others share the image.
  (cd "$root" && docker compose -f docker-compose.yml -f deploy/offline/compose.offline.yml \
      --profile cpu build model-init) >&2
}

rebuild() {  # rebuild IMAGE COMMAND...: build from the layer cache; drop the image it replaces
  # (the dae image's venv layer alone is gigabytes). Builder stages stay: they are the cache.
  local old
  old="$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)"
  timed "$@"
  if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "$1")" ]]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
}

have "$BASE" || timed "$BASE" build_base
have "$PYTHON" || timed "$PYTHON" docker build -q --build-arg BASE_IMAGE="$BASE" -t "$PYTHON" "$here/python" >/dev/null
rebuild "$KAFKA" build_kafka
rebuild "$PROMETHEUS" build_dir "$PROMETHEUS" prometheus
rebuild "$ALERTMANAGER" build_dir "$ALERTMANAGER" alertmanager
rebuild "$DAE" build_dae
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E "^(dae-offline/|dae-stream:cpu)" | sort >&2
