#!/bin/busybox sh
# The domU's /init: say it is up (dom0 waits for DOMU-READY in xenconsoled's
# log of this console), then idle until dom0 destroys the domain.
/bin/busybox mount -t proc proc /proc
echo "DOMU-INIT: uptime $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
/bin/busybox grep -E 'MemTotal|MemFree' /proc/meminfo
/bin/busybox cat /proc/cmdline
echo DOMU-READY
while :; do /bin/busybox sleep 3600; done
