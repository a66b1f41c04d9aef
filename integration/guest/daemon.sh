#!/bin/sh
# The daemon end to end in a guest (vm/run): judged by integration/test_daemon_vm.py (see its
# header for what and why), run by integration/guest_session.py in each kernel's one boot.
# Asserts nothing itself; every observation becomes a file in OUT, OUT/complete last.
#
# usage: daemon.sh OUT MODREAD CILIUMREAD yes|no MODULE...
#   OUT holds mods/<MODULE>.ko, mods/btfr_embed.mutated, mods/btfr_loader.mutated and
#   btfreconciled.toml (prepared on the host); MODREAD is examples/modread, CILIUMREAD
#   examples/ciliumread (the cilium/ebpf loader); yes runs bpftrace.
set -u
O=$1; MODREAD=$2; CILIUMREAD=$3; BPFTRACE=$4; shift 4
MODS="$*"
# btfreconcilectl through one warm, forked-per-call process (integration/guest/ctl.sh): the
# script makes ~50 calls, and a Python start plus imports is 3-5 s each under TCG
. ./integration/guest/ctl.sh
log() { echo "guest: $*" >&2; }
uname -r > $O/uname
# The daemon as the unit runs it: own network namespace, JSON logs, no TTY.
unshare -n python3 -m btfreconciled.daemon.main --foreground --config $O/btfreconciled.toml \
    > $O/daemon.stdout 2> $O/daemon.log &
DPID=$!
i=0
until ctl status > $O/status0.txt 2> $O/status0.err; do
    i=$((i + 1)); [ $i -gt 600 ] && { log "daemon did not come up"; cat $O/daemon.log >&2; exit 3; }
    kill -0 $DPID 2>/dev/null || { log "daemon died"; cat $O/daemon.log >&2; exit 3; }
    sleep 0.1
done
ctl status --json > $O/status0.json
# wait until a module's verdict is published (the uevent is the only trigger)
wait_verdict() {  # MODULE OUTFILE
    i=0
    until ctl show --json "$1" > "$2" 2>/dev/null && settled "$2"; do
        i=$((i + 1)); [ $i -gt 600 ] && { log "no verdict for $1"; return 1; }
        sleep 0.05
    done
}
for m in $MODS; do
    insmod $O/mods/$m.ko > $O/$m.insmod 2>&1; echo $? > $O/$m.insmod.rc
    wait_verdict $m $O/$m.show.json; echo $? > $O/$m.wait.rc
    ctl show $m > $O/$m.show.txt 2>&1
    ctl path $m > $O/$m.path.txt 2> $O/$m.path.err; echo $? > $O/$m.path.rc
    p=$(cat $O/$m.path.txt)
    [ -n "$p" ] && [ -f "$p" ] && cp "$p" $O/$m.ours.btf
    [ -e /sys/kernel/btf/$m ] && cp /sys/kernel/btf/$m $O/$m.kernel.btf
done
ctl status > $O/status1.txt 2>&1
ctl status --json > $O/status1.json 2>&1
ctl list > $O/list.txt 2>&1
ctl list --json > $O/list.json 2>&1
# --- merged BTF (vmlinux + module, standalone) for loaders: copied out, judged on the host
# (bpftool reads it with no base; it must dump as the running vmlinux followed by libbpf's
# own relocation of the .ko onto it: guest_session.py dumps it there)
check_merged() {  # NAME PATH-FILE
    p=$(cat "$2")
    [ -n "$p" ] && [ -f "$p" ] && cp "$p" $O/$1.merged.btf
}
# The daemon writes merged files beside its worker, a moment after the verdicts: --wait
# for them, as a loader started right after insmod would; 60 s for all of them together,
# so a daemon that never writes them costs one minute, not one per module.
MERGED_DEADLINE=$(($(date +%s) + 60))
merged_path() {  # NAME [MODULE]
    name=$1; shift
    s0=$(date +%s); left=$((MERGED_DEADLINE - s0)); [ $left -gt 0 ] || left=0
    ctl path --merged --wait $left "$@" > $O/$name.merged.path 2> $O/$name.merged.err
    echo $? > $O/$name.merged.rc
    echo $(($(date +%s) - s0)) > $O/$name.merged.secs
}
for m in $MODS; do
    merged_path $m $m
    check_merged $m $O/$m.merged.path
done
merged_path all
check_merged all $O/all.merged.path
# --- real loaders: examples/modread (libbpf 1.5) and bpftrace 0.23, CO-RE on btfr_loader
# A loader finds btfreconcilectl on PATH; the project is not installed in the VM's root.
mkdir -p /tmp/btfr-bin
cat > /tmp/btfr-bin/btfreconcilectl <<'CTL'
#!/bin/sh
exec python3 -c 'import sys; from btfreconciled.cli.main import main; sys.exit(main())' "$@"
CTL
chmod +x /tmp/btfr-bin/btfreconcilectl
export PATH=/tmp/btfr-bin:$PATH
POKE=/sys/module/btfr_loader/parameters/poke
# run_loader NAME VALUE CMD...: CMD in the background; VALUE is written to the poke
# parameter (counter = VALUE, then btfr_loader_poke() runs) every 0.2 s until CMD exits.
# Poking until then, not once after a banner: bpftrace prints "Attaching" before it has
# attached, and a poke nobody sees is harmless.
run_loader() {
    name=$1; val=$2; shift 2
    s0=$(date +%s)
    "$@" > $O/$name.out 2> $O/$name.err &
    lp=$!
    i=0
    while kill -0 $lp 2>/dev/null; do
        echo $val > $POKE
        i=$((i + 1)); [ $i -gt 900 ] && { log "$name still running after 180 s"; kill $lp; }
        sleep 0.2
    done
    wait $lp; echo $? > $O/$name.rc
    echo $(($(date +%s) - s0)) > $O/$name.secs
}
run_loader modread.default 31337 $MODREAD --timeout 60
run_loader modread.kernel 31338 $MODREAD --kernel-btf --timeout 60
run_loader modread.all 31339 $MODREAD --btf "$(cat $O/all.merged.path)" --timeout 60
# the minimized BTF (issue 21): only the types modread.bpf.o's CO-RE relocations need, cut
# from the running vmlinux and btfr_loader's reconciled BTF in the daemon's cache
ctl min-core-btf "$(dirname "$MODREAD")/modread.bpf.o" --module btfr_loader \
    --cache-dir /tmp/btfr-cache -o /tmp/modread.min.btf > $O/mincore.out 2> $O/mincore.err
echo $? > $O/mincore.rc
[ -f /tmp/modread.min.btf ] && cp /tmp/modread.min.btf $O/modread.min.btf
run_loader modread.min 31342 $MODREAD --btf /tmp/modread.min.btf --timeout 60
# cilium/ebpf (Go, Debian's 0.11): the same program, CO-RE types from
# ProgramOptions.KernelTypes = the merged file; without it cilium/ebpf takes the kernel's
# vmlinux BTF only (0.11 never reads module BTF), which is the negative control
run_loader cilium.merged 31343 $CILIUMREAD --btf "$(cat $O/btfr_loader.merged.path)" --timeout 60
run_loader cilium.kernel 31344 $CILIUMREAD --timeout 60
if [ "$BPFTRACE" = yes ]; then
    BT='kprobe:btfr_loader_poke {
        printf("counter=%u\n", ((struct btfr_loader_state *)arg0)->counter); exit(); }'
    run_loader bpftrace.merged 31340 \
        env BPFTRACE_BTF="$(cat $O/btfr_loader.merged.path)" timeout 120 bpftrace -e "$BT"
    run_loader bpftrace.kernel 31341 timeout 120 bpftrace -e "$BT"
fi
# the incompatible build replaces btfr_embed on disk, then is loaded instead
rmmod btfr_embed; echo $? > $O/rmmod.rc
i=0
until ! ctl show btfr_embed > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.05
done
ctl show btfr_embed > $O/after_rmmod.txt 2>&1; echo $? > $O/after_rmmod.rc
cp $O/mods/btfr_embed.mutated $O/mods/btfr_embed.ko
insmod $O/mods/btfr_embed.ko > $O/bad.insmod 2>&1; echo $? > $O/bad.insmod.rc
# a kernel without CONFIG_MODULE_ALLOW_BTF_MISMATCH (Debian's 7.2) refuses the module: no
# uevent, nothing to wait for
if [ "$(cat $O/bad.insmod.rc)" = 0 ]; then
    wait_verdict btfr_embed $O/bad.show.json; echo $? > $O/bad.wait.rc
else
    echo refused > $O/bad.wait.rc
    # all a refused insmod leaves behind is the kernel log: doctor on the file explains it
    ctl doctor $O/mods/btfr_embed.ko > $O/bad.doctor.txt 2>&1; echo $? > $O/bad.doctor.rc
fi
dmesg | grep -F btfr_embed | tail -n 5 > $O/bad.dmesg
ctl show btfr_embed > $O/bad.show.txt 2>&1
ctl path btfr_embed > $O/bad.path.txt 2> $O/bad.path.err; echo $? > $O/bad.path.rc
ls -la /tmp/btfr-cache/current/modules/ > $O/bad.cache-ls.txt 2>&1
[ -e /sys/kernel/btf/btfr_embed ] && echo yes > $O/bad.kernel-btf || echo no > $O/bad.kernel-btf
# the incompatible btfr_loader (struct list_head grown): no merged BTF, modread says why
rmmod btfr_loader; echo $? > $O/badloader.rmmod.rc
i=0
until ! ctl show btfr_loader > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.05
done
cp $O/mods/btfr_loader.mutated $O/mods/btfr_loader.ko
insmod $O/mods/btfr_loader.ko > $O/badloader.insmod 2>&1; echo $? > $O/badloader.insmod.rc
if [ "$(cat $O/badloader.insmod.rc)" = 0 ]; then
    wait_verdict btfr_loader $O/badloader.show.json; echo $? > $O/badloader.wait.rc
else
    echo refused > $O/badloader.wait.rc
fi
dmesg | grep -F btfr_loader | tail -n 5 > $O/badloader.dmesg
ctl path --merged btfr_loader > $O/badloader.merged.path 2> $O/badloader.merged.err
echo $? > $O/badloader.merged.rc
# the compatible build's merged file goes when the writer catches up (debounced, < 1 s)
i=0
while [ -e /tmp/btfr-cache/current/merged/btfr_loader.btf ] && [ $i -lt 100 ]; do
    i=$((i + 1)); sleep 0.1
done
ls -la /tmp/btfr-cache/current/merged/ > $O/badloader.merged-ls.txt 2>&1
run_loader badloader.modread 4343 $MODREAD --timeout 30
dmesg | tail -n 30 > $O/dmesg.tail
# clean stop: SIGTERM, socket removed
kill -TERM $DPID; wait $DPID; echo $? > $O/daemon.rc
S=/run/btfreconciled/control.sock
[ -e $S ] && echo present > $O/socket-after-stop || echo gone > $O/socket-after-stop
ctl status > /dev/null 2> $O/status-stopped.err; echo $? > $O/status-stopped.rc
kill $CTL_ZYGOTE
cp -r /tmp/btfr-cache $O/cache
echo done > $O/complete
