#!/bin/busybox sh
# dom0's /init for the live capture (busybox sh, inside the QEMU guest).
# Starts the toolstack, builds one domU from /root/domu/domu.cfg, lets it run,
# dumps Xen's P2M counters (debug key 'q') with the domU up and after
# destroying it, then powers the machine off. Lines starting with "XCAP:" are
# landmarks that capture/xen_capture.py reads back from the serial console.
/bin/busybox --install -s /bin
export PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LD_LIBRARY_PATH=/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/run/xen /var/lib/xen /var/log/xen/console
mount -t devpts devpts /dev/pts

# Settings from the kernel command line: xcap_hold=<seconds the domU runs>.
HOLD=15
for a in $(cat /proc/cmdline); do
    case "$a" in xcap_hold=*) HOLD=${a#xcap_hold=} ;; esac
done

up() { cut -d' ' -f1 /proc/uptime; }
run() { echo "XCAP: \$ $*"; "$@"; rc=$?; echo "XCAP: rc=$rc"; return $rc; }
# One 'q' dump; the marker names the moment for the counters file.
dump() {
    echo "XCAP: dump $1"
    run xl debug-keys q
    sleep 1   # let Xen finish printing the dump before the next line
    echo "XCAP: dump-end"
}
finish() { echo "XCAP: done uptime $(up) s"; sync; poweroff -f; }

echo "XCAP: dom0 userspace up; uptime $(up) s"

# Debian's kernel has these as modules (xenfs needs privcmd first).
M=/lib/modules/$(uname -r)/kernel/drivers/xen
for m in xen-privcmd.ko xenfs/xenfs.ko xen-evtchn.ko xen-gntdev.ko xen-gntalloc.ko; do
    insmod "$M/$m" || echo "XCAP: insmod $m failed"
done
mount -t xenfs xenfs /proc/xen

run xenstored --pid-file /run/xenstored.pid
run xen-init-dom0
run xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
run xl info
run xl list
dump "dom0 booted"

echo "XCAP: creating domU; uptime $(up) s"
run xl -vvv create /root/domu/domu.cfg || finish
echo "XCAP: domU created; uptime $(up) s"
run xl list

# Wait (at most 120 s) for the domU's init to say it is up, via xenconsoled's log.
LOG=/var/log/xen/console/guest-domu1.log
i=0
while [ $i -lt 120 ] && ! grep -q DOMU-READY "$LOG" 2>/dev/null; do
    sleep 1; i=$((i + 1))
done
echo "XCAP: domU ready after ${i}s wait; uptime $(up) s"
echo "XCAP: ---- domU console log ----"
tail -n 8 "$LOG"
echo "XCAP: ---- end ----"
run xl list
dump "domU running"

echo "XCAP: hold ${HOLD}s"
sleep "$HOLD"
run xl destroy domu1
run xl list
dump "domU destroyed"
finish
