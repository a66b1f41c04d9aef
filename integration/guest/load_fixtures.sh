#!/bin/sh
# Runs inside the test VM (vm/run): load fixture modules and record what the kernel
# made of their BTF.  usage: load_fixtures.sh OUT_DIR PHASE FIXTURE_DIR MOD... [-- PHASE FIXTURE_DIR MOD...]
#
# For each phase (e.g. "distilled" with fixtures/<rel>/, "plain" with fixtures/<rel>/plain/)
# and module M, writes into OUT_DIR/PHASE/:
#   M.insmod (output) M.insmod.rc, M.btf (copy of /sys/kernel/btf/M, when present),
#   M.sysfs.txt / .rc (bpftool 7.5 raw dump of /sys/kernel/btf/M on /sys/kernel/btf/vmlinux),
#   M.ko.txt / .rc (bpftool raw dump of the .ko file with -B /sys/kernel/btf/vmlinux:
#   libbpf relocates a .BTF.base module onto the running vmlinux), M.dmesg (new kernel lines).
# Modules are removed again at the end of each phase.  OUT_DIR also gets uname, vmlinux.btf
# (/sys/kernel/btf/vmlinux), dmesg (whole log at the end), bpftool.version.
set -u
out=$1; shift
mkdir -p "$out"
uname -r >"$out/uname"
cp /sys/kernel/btf/vmlinux "$out/vmlinux.btf"
bpftool version >"$out/bpftool.version" 2>&1
while [ $# -gt 0 ]; do
    phase=$1; fx=$2; shift 2
    d="$out/$phase"; mkdir -p "$d"
    loaded=""
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
        m=$1; shift
        before=$(dmesg | wc -l)
        insmod "$fx/$m.ko" >"$d/$m.insmod" 2>&1
        echo $? >"$d/$m.insmod.rc"
        grep -q "^$m " /proc/modules && loaded="$m $loaded"
        if [ -e "/sys/kernel/btf/$m" ]; then
            cp "/sys/kernel/btf/$m" "$d/$m.btf"
            bpftool btf dump file "/sys/kernel/btf/$m" -B /sys/kernel/btf/vmlinux format raw >"$d/$m.sysfs.txt" 2>&1
            echo $? >"$d/$m.sysfs.rc"
        fi
        bpftool btf dump file "$fx/$m.ko" -B /sys/kernel/btf/vmlinux format raw >"$d/$m.ko.txt" 2>&1
        echo $? >"$d/$m.ko.rc"
        dmesg | tail -n +"$((before + 1))" >"$d/$m.dmesg"
    done
    [ $# -gt 0 ] && shift
    for m in $loaded; do rmmod "$m" >>"$d/rmmod.log" 2>&1; done
done
dmesg >"$out/dmesg"
echo done >"$out/complete"
