#!/bin/sh
# The Debian-kernel guest's boot files, from Debian's packages:
#   build-mtty.sh DEBS_DIR KERNEL_RELEASE OUT_DIR MODULE...
# OUT_DIR/vmlinuz (Debian's kernel), OUT_DIR/modules/<name>.ko for each MODULE (decompressed: busybox
# insmod reads plain .ko), and OUT_DIR/modules/mtty.ko built out of tree from linux-source's
# samples/vfio-mdev/mtty.c against Debian's headers (Debian ships no SAMPLES). About 5 s of build.
set -eu
debs=$1 release=$2 out=$3
shift 3
work="$out/work"
rm -rf "$work" "$out/modules"
mkdir -p "$work/root" "$work/mtty" "$out/modules"
for p in "$debs"/linux-image-*.deb "$debs"/linux-headers-*.deb "$debs"/linux-kbuild-*.deb; do dpkg-deb -x "$p" "$work/root"; done
cp "$work/root/boot/vmlinuz-$release" "$out/vmlinuz"
for m in "$@"; do
  ko=$(find "$work/root/lib/modules/$release" -name "$m.ko.xz" | head -n 1)
  [ -n "$ko" ] || { echo "build-mtty.sh: no module $m in $release" >&2; exit 1; }
  xz -dc "$ko" > "$out/modules/$m.ko"
done
headers="$work/root/usr/src/linux-headers-$release"
common=$(ls -d "$work"/root/usr/src/linux-headers-*-common)
# The headers include their common half by its absolute /usr/src path: point it at ours.
echo "include $common/Makefile" > "$headers/Makefile"
dpkg-deb --fsys-tarfile "$debs"/linux-source-*.deb | tar -xO --wildcards './usr/src/linux-source-*.tar.xz' \
  | tar -xJ -C "$work/mtty" --strip-components=3 --wildcards '*/samples/vfio-mdev/mtty.c'
echo 'obj-m := mtty.o' > "$work/mtty/Kbuild"
# No pahole here: skip the BTF of the module (it only serves debuggers).
make -s -C "$headers" M="$work/mtty" CONFIG_DEBUG_INFO_BTF_MODULES= modules
strip --strip-debug -o "$out/modules/mtty.ko" "$work/mtty/mtty.ko"
rm -rf "$work"
