#!/bin/sh
# Builds the iommufd/cdev guest kernel from Debian's linux-source package:
#   build-kernel.sh LINUX_SOURCE_DEB FRAGMENT OUT_DIR
# tinyconfig + FRAGMENT + olddefconfig, `make -j3 bzImage` (about 10 minutes on 2 cores). Writes
# OUT_DIR/bzImage and OUT_DIR/config; the unpacked source (1.7 GB) is removed afterwards.
set -eu
deb=$1 fragment=$(realpath "$2") out=$3
work="$out/src"
rm -rf "$work"
mkdir -p "$work"
# Stream the source tarball out of the package: nothing but the tree lands on disk.
dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$work"
cd "$work"/linux-source-*
make -s tinyconfig
scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null
make -s olddefconfig
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$fragment" | while read -r line; do grep -qx "$line" .config || echo "$line"; done)
if [ -n "$missing" ]; then
  echo "build-kernel.sh: olddefconfig dropped these settings (a dependency is missing from $fragment):" >&2
  echo "$missing" >&2
  exit 1
fi
make -s -j"${JOBS:-3}" bzImage
cp arch/x86/boot/bzImage "$out/bzImage.tmp"
cp .config "$out/config"
mv "$out/bzImage.tmp" "$out/bzImage"
cd /
rm -rf "$work"
