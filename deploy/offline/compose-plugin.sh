#!/usr/bin/env bash
# Builds the `docker compose` v2 CLI plugin from the Go module proxy when no `docker compose`
# answers (Debian ships only the docker CLI and the old Python docker-compose 1.x, which rejects
# the compose file's top-level `name:`). `go install ...@version` refuses the module (its go.mod has
# exclude directives), so: the module's source from the proxy, `go mod download`, `go build`.
#
#   deploy/offline/compose-plugin.sh          install into ~/.docker/cli-plugins (cached binary)
#
# Environment: DAE_COMPOSE_VERSION (default v2.40.3), DAE_COMPOSE_CACHE (default ~/.cache/dae).
set -euo pipefail

version="${DAE_COMPOSE_VERSION:-v2.40.3}"
cache="${DAE_COMPOSE_CACHE:-$HOME/.cache/dae}/docker-compose-$version"
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

log() { echo "compose-plugin: $*" >&2; }

if docker compose version >/dev/null 2>&1; then
  docker compose version >&2
  exit 0
fi
if [[ ! -x "$cache" ]]; then
  command -v go >/dev/null || { log "no 'docker compose' and no Go toolchain to build it"; exit 1; }
  log "building docker compose $version from the Go module proxy (several minutes, once)"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # The module's own directory, so that its go.mod (requires, excludes) governs the build.
  dir="$(cd "$work" && go mod init dae.local/compose-build >/dev/null 2>&1 \
         && go mod download -json "github.com/docker/compose/v2@$version" \
         | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  cp -r "$dir" "$work/src" && chmod -R u+w "$work/src"
  (
    cd "$work/src"
    go mod download
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$version" \
      -o "$work/docker-compose" ./cmd
  )
  mkdir -p "$(dirname "$cache")"
  mv "$work/docker-compose" "$cache"
fi
mkdir -p "$plugin_dir"
install -m 0755 "$cache" "$plugin_dir/docker-compose"
docker compose version >&2
