#!/usr/bin/env bash
# Build the CPU image and run a small offline job in it; print the machine, the image size, the build
# time and the run times; check that the image carries no pip configuration or host certificate and runs
# as an unprivileged user. Not part of the test suite (minutes, GBs). Figures: docs/benchmarks.md,
# "Container images".
#
#   docker/smoke.sh                       # local base image (made if missing), EXTRAS=serve,postgres
#   NO_CACHE=1 docker/smoke.sh            # a cold build (every layer built again; the base image kept)
#   BASE=python:3.11-slim docker/smoke.sh # the official base, where a registry is reachable
#
# Environment: BASE (local/bookworm-python:3.11), IMAGE (automl:smoke), EXTRAS (serve,postgres), NO_CACHE (0),
# KEEP (0: the smoke volume is removed at the end), MAKE_BASE (../shared/docker/make-base-image.sh),
# PIP_CERT (the CA bundle pip needs here, copied into the build stage only, if set).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DOCKER=/usr/bin/docker                 # Debian's client, matching Debian's daemon
BASE=${BASE:-local/bookworm-python:3.11}
IMAGE=${IMAGE:-automl:smoke}
EXTRAS=${EXTRAS-serve,postgres}
VOLUME=automl-smoke-store
MAKE_BASE=${MAKE_BASE:-$ROOT/../shared/docker/make-base-image.sh}
CERT_COPY=docker/certs/pip-cert.pem
LOG=${TMPDIR:-/tmp}/automl-smoke-build.log

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
seconds() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(seconds)" 'BEGIN { printf "%.1f", b - a }'; }

# --- the engine and the base image ----------------------------------------------------------------------
if ! $DOCKER info >/dev/null 2>&1 || { [[ $BASE == local/* ]] && ! $DOCKER image inspect "$BASE" >/dev/null 2>&1; }; then
  [[ $BASE == local/* ]] || fail "no docker engine answers; start dockerd"
  [[ -x $MAKE_BASE || -f $MAKE_BASE ]] || fail "$BASE is missing and $MAKE_BASE is not there to make it"
  say "making $BASE with $MAKE_BASE (as root)"
  BASE="$BASE" bash "$MAKE_BASE"
fi

say "machine"
CPU=$(LC_ALL=C lscpu | sed -n 's/^Model name: *//p' | head -1)
printf 'cpu: %s\ncores: %s\nmemory: %s\ndocker: %s\n' "$CPU" "$(nproc)" \
  "$(free -g | awk '/^Mem:/ {print $2 " GiB"}')" "$($DOCKER version --format '{{.Server.Version}}')"

# --- build ----------------------------------------------------------------------------------------------
cleanup_cert() { rm -f "$ROOT/$CERT_COPY"; }
trap 'cleanup_cert' EXIT
if [[ -n ${PIP_CERT:-} && -f ${PIP_CERT} ]]; then
  cp "$PIP_CERT" "$CERT_COPY"
  echo "build stage trusts $PIP_CERT (copied to $CERT_COPY for the build only)"
fi
ARGS=(--build-arg "BASE=$BASE" --build-arg "EXTRAS=$EXTRAS" -t "$IMAGE")
[[ ${NO_CACHE:-0} == 1 ]] && ARGS+=(--no-cache)
say "docker build ${ARGS[*]} . (log: $LOG)"
T=$(seconds)
if ! $DOCKER build "${ARGS[@]}" . >"$LOG" 2>&1; then tail -40 "$LOG"; fail "docker build (log: $LOG)"; fi
BUILD_S=$(elapsed "$T")
cleanup_cert
SIZE=$($DOCKER image inspect "$IMAGE" --format '{{.Size}}')
printf 'build: %s s%s\nimage: %s, %s bytes (%.2f GB; the base %s is %.2f GB of it)\n' "$BUILD_S" \
  "$([[ ${NO_CACHE:-0} == 1 ]] && echo ' (no cache)')" "$IMAGE" "$SIZE" "$(awk -v s="$SIZE" 'BEGIN{print s/1e9}')" \
  "$BASE" "$(awk -v s="$($DOCKER image inspect "$BASE" --format '{{.Size}}')" 'BEGIN{print s/1e9}')"

# --- what the final image must not carry --------------------------------------------------------------
say "checks: no pip configuration, no host certificate, not root"
ENV_LINES=$($DOCKER run --rm --network none --entrypoint env "$IMAGE")
if grep -E '^PIP_' <<<"$ENV_LINES"; then fail "the image sets PIP_* variables (above)"; fi
if $DOCKER image inspect "$IMAGE" --format '{{json .Config.Env}}' | grep -q 'PIP_'; then fail "PIP_* in the image config"; fi
# The image's own layers: its history less the base's (the newest come first).
OWN=$(( $($DOCKER history -q "$IMAGE" | wc -l) - $($DOCKER history -q "$BASE" | wc -l) ))
if $DOCKER history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" | head -n "$OWN" | grep -iE 'PIP_|pip-cert|certs/'; then
  fail "a layer of the final image mentions pip settings or the build certificate (above)"
fi
echo "no PIP_* in env, config or history"
if [[ -n ${PIP_CERT:-} && -f ${PIP_CERT} ]]; then
  # Any file of the same size and content as the host's bundle, anywhere in the image.
  BYTES=$(stat -c %s "$PIP_CERT"); HASH=$(sha256sum "$PIP_CERT" | cut -d' ' -f1)
  FOUND=$($DOCKER run --rm --network none --user 0 --entrypoint sh "$IMAGE" -c \
    "find / -xdev -type f -size ${BYTES}c -exec sha256sum {} + 2>/dev/null" | grep "^$HASH" || true)
  [[ -z $FOUND ]] || fail "the host's certificate bundle is in the image: $FOUND"
  echo "no file in the image has the content of $PIP_CERT"
fi
if [[ ,$EXTRAS, == *,postgres,* || ,$EXTRAS, == *,all,* ]]; then
  $DOCKER run --rm --network none --entrypoint python "$IMAGE" -c \
    "import psycopg, sqlalchemy; print('PostgreSQL driver: psycopg', psycopg.__version__, '(SQLAlchemy', sqlalchemy.__version__ + ')')"
fi
WHO=$($DOCKER run --rm --network none --entrypoint id "$IMAGE")
echo "runs as: $WHO"
[[ $WHO != uid=0\(* ]] || fail "the image runs as root"

# --- run: demo data and a small fit, offline, on a store volume ---------------------------------------
$DOCKER volume rm -f "$VOLUME" >/dev/null
$DOCKER volume create "$VOLUME" >/dev/null
RUN=($DOCKER run --rm --network none -v "$VOLUME:/store" "$IMAGE")
FIT=(fit /store/demo --extractors inception-v3 --weights none --image-size 75 \
     --heads logreg-elasticnet,svc-rbf --trials 6 --cv 3 --no-progress)

say "automl demo-data /store/demo"
T=$(seconds); "${RUN[@]}" demo-data /store/demo; DEMO_S=$(elapsed "$T")
say "automl ${FIT[*]}"
T=$(seconds); "${RUN[@]}" "${FIT[@]}"; FIT_S=$(elapsed "$T")
say "the same fit again (embeddings and trials from the store)"
T=$(seconds); "${RUN[@]}" "${FIT[@]}" >/dev/null; REFIT_S=$(elapsed "$T")
say "automl runs"
"${RUN[@]}" runs

say "automl serve --workers 1 (loopback inside the container) and GET /health"
CID=$($DOCKER run -d --network none -v "$VOLUME:/store" "$IMAGE" serve --no-auth --workers 1)
HEALTH=""
for _ in $(seq 60); do
  HEALTH=$($DOCKER exec "$CID" python -c \
    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/health').read().decode())" 2>/dev/null) && break
  sleep 1
done
$DOCKER stop -t 20 "$CID" >/dev/null; $DOCKER rm "$CID" >/dev/null
[[ $HEALTH == *ok* ]] || fail "automl serve did not answer /health"
echo "/health: $HEALTH"

[[ ${KEEP:-0} == 1 ]] || $DOCKER volume rm "$VOLUME" >/dev/null

say "figures"
printf 'machine: %s, %s cores\nimage: %s (EXTRAS=%s, BASE=%s): %.2f GB\nbuild: %s s\n' \
  "$CPU" "$(nproc)" "$IMAGE" "$EXTRAS" "$BASE" "$(awk -v s="$SIZE" 'BEGIN{print s/1e9}')" "$BUILD_S"
printf 'demo-data: %s s\nfit (first, embeds): %s s\nfit (again, cached): %s s\n' "$DEMO_S" "$FIT_S" "$REFIT_S"
echo "smoke: ok"
