#!/usr/bin/env bash
# Pack what deploy/gpu/bench.sh needs on a GPU host that reaches no network (and has no JDK):
#   KIT/kit.tar.xz  a Java runtime cut down with jlink (the modules Kafka's broker uses) and the
#                   broker's jars from Maven Central, their native libraries kept for linux-x86_64
#                   only and stored uncompressed, so that xz packs them (~32 MB instead of ~120 MB);
#   KIT/wheels/     the project's Python dependencies that such a host may lack (CPython 3.12,
#                   manylinux x86-64), for an install with --no-index.
# Run it on a machine with a JDK 17+, Maven and PyPI; then on the GPU host:
#   DAE_BENCH_KIT=KIT/kit.tar.xz DAE_BENCH_WHEELS=KIT/wheels deploy/gpu/bench.sh
#
#   deploy/gpu/offline-kit.sh [KIT]     # default KIT: .gpukit (ignored by git)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
kit="${1:-$root/.gpukit}"
py="${DAE_KIT_PYTHON:-python3}"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$root/deploy/kafka/pom.xml")"
jars="${DAE_KAFKA_HOME:-$HOME/.cache/dae/kafka-$version}"
log() { echo "offline-kit.sh: $*" >&2; }

mkdir -p "$kit/wheels"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. The broker's jars (kafka.sh resolves them with Maven once), repacked.
if [[ ! -f "$jars/.complete" ]]; then
  "$root/deploy/kafka/kafka.sh" resolve
fi
mkdir -p "$work/kafka-$version/libs"
touch "$work/kafka-$version/.complete"
"$py" - "$jars/libs" "$work/kafka-$version/libs" <<'PY'
import sys
import zipfile
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
native = (".so", ".dll", ".dylib", ".jnilib", ".a")
for jar in sorted(src.glob("*.jar")):
    with zipfile.ZipFile(jar) as zi, zipfile.ZipFile(dst / jar.name, "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            low = info.filename.lower()
            if low.endswith(native) and not ("linux" in low and ("amd64" in low or "x86_64" in low)):
                continue  # another platform's native library
            zo.writestr(info, zi.read(info.filename), compress_type=zipfile.ZIP_STORED)
PY

# 2. A Java runtime with the modules the broker and its libraries load.
jlink="${JAVA_HOME:+$JAVA_HOME/bin/}jlink"
"$jlink" --add-modules java.base,java.compiler,java.desktop,java.instrument,java.logging,java.management,\
java.management.rmi,java.naming,java.net.http,java.prefs,java.rmi,java.scripting,java.security.jgss,\
java.security.sasl,java.sql,java.transaction.xa,java.xml,jdk.crypto.ec,jdk.management,jdk.unsupported,\
jdk.zipfs,jdk.naming.dns,jdk.security.auth,jdk.security.jgss,jdk.jfr,jdk.management.jfr \
  --strip-debug --no-header-files --no-man-pages --compress=0 --output "$work/jre"

log "packing $kit/kit.tar.xz (a few minutes: xz -9)"
tar -C "$work" -cf - jre "kafka-$version" | xz -T0 -9 > "$kit/kit.tar.xz"

# 3. Wheels a CUDA/PyTorch image usually lacks (torch, numpy, scipy, safetensors, typer, rich and
#    prometheus-client it has). pydantic and pydantic-core must match: take them together; numba and
#    llvmlite too (the alert engine's compiled pass).
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$kit/wheels" \
  "kafka-python==2.3.3" crc32c "pydantic==2.14.4" "pydantic-core==2.50.5" pydantic-settings \
  python-dotenv typing-inspection annotated-types "typing-extensions>=4.16" "numba==0.68.1" "llvmlite==0.50.0"
log "done: $(du -sh "$kit" | cut -f1) in $kit"
