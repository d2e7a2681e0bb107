#!/bin/busybox sh
# The guest's /init (busybox, in the initramfs). It loads the modules the initramfs carries (the
# Debian kernel's; the cdev kernel has everything built in), mounts the host's root read-only over
# 9p, the run's own directory read-write on top of it at the same path, brings up QEMU's user
# network, and runs the host-written script named by devmig.run= in a chroot into the host root, so
# Node and the repository run as they are on the host. Its exit code goes to <out>/exit and to the
# console; then the guest powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /modules/order 2>/dev/null); do
  insmod "/modules/$m.ko" || echo "devmig-guest: insmod $m failed"
done

for w in $(cat /proc/cmdline); do
  case "$w" in
    devmig.run=*) run=${w#devmig.run=} ;;
    devmig.out=*) out=${w#devmig.out=} ;;
    devmig.keep=*) keep=${w#devmig.keep=} ;;
  esac
done

mkdir -p /host
# Read-only, so caching everything (cache=loose) is safe: Node starts in under a second against 5-9 s.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host || { echo "devmig-guest: no host share"; reboot -f; }
mount --rbind /proc /host/proc
mount --rbind /sys /host/sys
mount --rbind /dev /host/dev
# The repository stays visible even where the guest's own tmpfs go (a fresh clone in /tmp): held
# aside before they are mounted, put back at its path after.
if [ -n "$keep" ]; then mkdir -p /keep && mount --bind "/host$keep" /keep; fi
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=755 tmpfs /host/run
mkdir -p /host/dev/shm && mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
if [ -n "$keep" ]; then mkdir -p "/host$keep" 2>/dev/null; mount --bind /keep "/host$keep" || { echo "devmig-guest: cannot keep $keep"; reboot -f; }; fi
# The run's directory, writable and uncached: the host reads what the guest writes there.
mkdir -p "/host$out" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "/host$out" || { echo "devmig-guest: no out share at $out"; reboot -f; }

ip link set lo up
if ip link set eth0 up 2>/dev/null; then
  ip addr add 10.0.2.15/24 dev eth0
  ip route add default via 10.0.2.2
fi

echo "devmig-guest: ready $(uname -r)"
chroot /host /bin/sh -c "cd '$out' && exec /bin/sh '$run'" </dev/console >/dev/console 2>&1
code=$?
echo "$code" > "/host$out/exit"
sync
echo "devmig-guest: exit $code"
reboot -f
