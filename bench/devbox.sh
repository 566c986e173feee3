#!/usr/bin/env bash
# Builds .devbox/devbox.tar.xz for bench/device_check.sh: a Java runtime cut with jlink to the
# modules Kafka's broker needs (`jdeps --print-module-deps` on its jars, plus jdk.management and
# java.xml), and the broker's jars as resolve_jars() caches them, with the compression
# libraries' native code for other platforms removed, so that both fit the device tool's
# 64 MiB working tree beside the wheels. Needs a JDK (jlink), zip, xz, and the jars resolved
# once here (any test that starts a broker does that).
set -eu
version=${KAFKA_VERSION:-4.1.1}
libs=${STREAM_AE_CACHE_DIR:-$HOME/.cache/stream-ae}/kafka-$version/libs
[ -f "$libs/.complete" ] || { echo "no resolved broker jars in $libs: start a broker once (make test)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jlink --add-modules java.base,java.compiler,java.desktop,java.management,java.naming,java.rmi,java.scripting,java.security.jgss,java.security.sasl,java.sql,jdk.unsupported,jdk.management,java.xml \
  --output "$tmp/jre" --strip-debug --no-man-pages --no-header-files --compress=0
strip --strip-unneeded "$tmp/jre/lib/server/libjvm.so"
mkdir -p "$tmp/cache/kafka-$version"
cp -r "$libs" "$tmp/cache/kafka-$version/"
cd "$tmp/cache/kafka-$version/libs"
zip -q -d zstd-jni-*.jar 'aix/*' 'darwin/*' 'freebsd/*' 'win/*' 'linux/aarch64/*' 'linux/arm/*' 'linux/i386/*' \
  'linux/loongarch64/*' 'linux/mips64/*' 'linux/ppc64/*' 'linux/ppc64le/*' 'linux/riscv64/*' 'linux/s390x/*'
n=org/xerial/snappy/native
zip -q -d snappy-java-*.jar "$n/AIX/*" "$n/FreeBSD/*" "$n/Mac/*" "$n/Windows/*" "$n/Linux/aarch64/*" "$n/Linux/android-*" \
  "$n/Linux/arm/*" "$n/Linux/armv6/*" "$n/Linux/armv7/*" "$n/Linux/loongarch64/*" "$n/Linux/ppc*" "$n/Linux/s390x/*" \
  "$n/Linux/x86/*" "$n/Linux/riscv64/*" "$n/SunOS/*"
cd - >/dev/null
mkdir -p .devbox
tar -cJf .devbox/devbox.tar.xz -C "$tmp" jre cache
ls -la .devbox/devbox.tar.xz
