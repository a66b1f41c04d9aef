#!/bin/sh
# Runs inside the test VM (vm/run): load fixture modules and record what the kernel
# made of their BTF.  usage: load_fixtures.sh OUT_DIR PHASE FIXTURE_DIR MOD... [-- PHASE FIXTURE_DIR MOD...]
#
# For each phase (e.g. "distilled" with fixtures/<rel>/, "plain" with fixtures/<rel>/plain/)
# and module M, writes into OUT_DIR/PHASE/:
#   M.insmod (output) M.insmod.rc, M.btf (copy of /sys/kernel/btf/M, when present),
#   M.dmesg (new kernel lines).
# Modules are removed again at the end of each phase.  OUT_DIR also gets uname, vmlinux.btf
# (/sys/kernel/btf/vmlinux), dmesg (whole log at the end), bpftool.version.
# The bpftool dumps of these files (M.sysfs.txt, M.ko.txt) are made afterwards on the host,
# by the same trixie bpftool 7.5 in its chroot (guest_session.py): each one parses the whole
# vmlinux BTF, seconds under TCG, and they need nothing from the running kernel but its bytes.
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
        fi
        dmesg | tail -n +"$((before + 1))" >"$d/$m.dmesg"
    done
    [ $# -gt 0 ] && shift
    for m in $loaded; do rmmod "$m" >>"$d/rmmod.log" 2>&1; done
done
dmesg >"$out/dmesg"
echo done >"$out/complete"
