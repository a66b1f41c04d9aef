#!/bin/sh
# The pop-os case for real (issue 10) and a module file replaced under a loaded module
# (issue 11 item 2), in one 6.12 guest.  Run by integration/test_popos_vm.py:
#
#   popos.sh OUT
#
# OUT (writable, shared with the host) holds on entry:
#   mods/btfr_types.ko       classic split BTF built against the other 6.12 (.117)
#   mods/btfr_loader.ko      likewise (its BTF happens to pass the kernel's checks on .118)
#   mods/btfr_embed.ko       classic split BTF built against the running 6.12 (.118)
#   new/btfr_embed.ko        the same module built against .117 (another build id)
#   dkms/*.ko                what "DKMS" installs for the other kernel (updates/dkms)
#   btfreconciled.toml       the daemon's config
# and receives every observation as a file; OUT/complete last.  Nothing is asserted here.
# The daemon's module directory is MODS, a local (tmpfs) copy of OUT/mods: module
# directories are local filesystems, and the daemon watches them with inotify.
set -u
O=$1
OTHER=$(cat "$O/other-release")
MODS=/tmp/btfr-mods
M=btfr_types
S=btfr_loader
E=btfr_embed
mkdir -p $MODS && cp "$O"/mods/*.ko $MODS/
log() { echo "guest: $*" >&2; }
t0=$(date +%s)
stamp() { echo "$1 $(( $(date +%s) - t0 ))" >> "$O/times"; }

# btfreconcilectl on PATH, as an installation has it (the hook runs it by name)
mkdir -p /tmp/bin
cat > /tmp/bin/btfreconcilectl <<EOF
#!/bin/sh
exec python3 -c 'import sys; from btfreconciled.cli.main import main; sys.exit(main())' "\$@"
EOF
chmod 755 /tmp/bin/btfreconcilectl
export PATH=/tmp/bin:$PATH
# the script's own calls go through one warm process (ctl.sh): a Python start is seconds
# under TCG
. ./integration/guest/ctl.sh
uname -r > "$O/uname"

unshare -n python3 -m btfreconciled.daemon.main --foreground --config "$O/btfreconciled.toml" \
    > "$O/daemon.stdout" 2> "$O/daemon.log" &
DPID=$!
i=0
until ctl status > /dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 1200 ] && { log "daemon did not come up"; cat "$O/daemon.log" >&2; exit 3; }
    kill -0 $DPID 2>/dev/null || { log "daemon died"; cat "$O/daemon.log" >&2; exit 3; }
    sleep 0.1
done
stamp daemon-up

# wait_verdict MODULE OUTFILE [VERDICT [SECONDS]]: until the module's record is settled (and
# has VERDICT); at most SECONDS (default 90)
wait_verdict() {
    end=$(( $(date +%s) + ${4:-90} ))
    while :; do
        if ctl show --json "$1" > "$2" 2>/dev/null && settled "$2"; then
            [ -z "${3:-}" ] && return 0
            [ "$(ctl field "$2" verdict)" = "$3" ] && return 0
        fi
        [ "$(date +%s)" -gt $end ] && { log "no verdict ${3:-} for $1"; return 1; }
        sleep 0.2
    done
}
wait_gone() {
    end=$(( $(date +%s) + 60 ))
    until ! ctl show "$1" > /dev/null 2>&1; do
        [ "$(date +%s)" -gt $end ] && return 1; sleep 0.2
    done
}

# ---- issue 10, 1: a module built for .117 forced into .118: the kernel drops its BTF
insmod -f "$MODS/$M.ko" > "$O/a.insmod" 2>&1; echo $? > "$O/a.insmod.rc"
dmesg > "$O/a.dmesg"
[ -e /sys/kernel/btf/$M ] && echo yes > "$O/a.kernel-btf" || echo no > "$O/a.kernel-btf"
cat /proc/sys/kernel/tainted > "$O/a.tainted"
stamp insmod-forced

# ---- 3 (first: the daemon saw the load): rescued in memory, published, merged
wait_verdict $M "$O/a.show.json" rescued; echo $? > "$O/a.wait.rc"
ctl show $M > "$O/a.show.txt" 2>&1
ctl path $M > "$O/a.path.txt" 2> "$O/a.path.err"; echo $? > "$O/a.path.rc"
p=$(cat "$O/a.path.txt")
[ -n "$p" ] && [ -f "$p" ] && cp "$p" "$O/a.ours.btf"
ctl path --merged --wait 120 $M > "$O/a.merged.txt" 2> "$O/a.merged.err"; echo $? > "$O/a.merged.rc"
mp=$(cat "$O/a.merged.txt")
# compared on the host (a 5 MB text dump costs minutes under TCG, and so does writing
# 5 MB through 9p: compressed it is about a fifth)
[ -n "$mp" ] && [ -f "$mp" ] && zstd -q -1 -c "$mp" > "$O/a.merged.btf.zst"
stamp rescued

# ---- the same with a module whose foreign BTF passes the kernel's checks by chance
insmod -f "$MODS/$S.ko" > "$O/s.insmod" 2>&1; echo $? > "$O/s.insmod.rc"
[ -e /sys/kernel/btf/$S ] && echo yes > "$O/s.kernel-btf" || echo no > "$O/s.kernel-btf"
wait_verdict $S "$O/s.show.json" rescued; echo $? > "$O/s.wait.rc"
ctl show $S > "$O/s.show.txt" 2>&1
p=$(ctl path $S 2> "$O/s.path.err"); echo $? > "$O/s.path.rc"
[ -n "$p" ] && [ -f "$p" ] && cp "$p" "$O/s.ours.btf"
stamp silent

# ---- 2: doctor on the file, and on every loaded module
ctl doctor "$MODS/$M.ko" > "$O/doctor.txt" 2> "$O/doctor.err"; echo $? > "$O/doctor.rc"
stamp doctor-file
ctl doctor > "$O/doctor-all.txt" 2> "$O/doctor-all.err"; echo $? > "$O/doctor-all.rc"
stamp doctor-loaded

# ---- 4: rescue the file, reload it: 6.12 relocates .BTF.base itself
ctl rescue "$MODS/$M.ko" --in-place > "$O/rescue.txt" 2> "$O/rescue.err"; echo $? > "$O/rescue.rc"
rmmod $M; echo $? > "$O/b.rmmod.rc"
wait_gone $M; echo $? > "$O/b.gone.rc"
insmod -f "$MODS/$M.ko" > "$O/b.insmod" 2>&1; echo $? > "$O/b.insmod.rc"
[ -e /sys/kernel/btf/$M ] && cp /sys/kernel/btf/$M "$O/b.kernel.btf"
wait_verdict $M "$O/b.show.json" ok; echo $? > "$O/b.wait.rc"
# the cross-check runs once the module is live: wait for it
i=0
end=$(( $(date +%s) + 60 ))
until case "$(ctl field "$O/b.show.json" cross_check.result)" in match|mismatch) true ;; *) false ;; esac; do
    [ "$(date +%s)" -gt $end ] && break
    sleep 0.1; ctl show --json $M > "$O/b.show.json" 2>/dev/null
done
ctl show $M > "$O/b.show.txt" 2>&1
p=$(ctl path $M 2> "$O/b.path.err"); echo $? > "$O/b.path.rc"
[ -n "$p" ] && [ -f "$p" ] && cp "$p" "$O/b.ours.btf"
dmesg | grep -F "$M" > "$O/b.dmesg"
cp "$MODS/$M.ko.btfr-orig" "$O/b.orig.ko"
stamp rescued-file-reloaded

# ---- 5: a second kernel's files installed, the postinst hook run
# the upper layer on a tmpfs of its own (virtme-ng's /tmp is not one overlayfs accepts)
mkdir -p /tmp/ovl && mount -t tmpfs tmpfs /tmp/ovl && mkdir -p /tmp/ovl/u /tmp/ovl/w
if mount -t overlay overlay -o "lowerdir=/usr/lib/modules/$OTHER,upperdir=/tmp/ovl/u,workdir=/tmp/ovl/w" \
        "/usr/lib/modules/$OTHER" 2> "$O/hook.mount.err"; then
    echo overlay > "$O/hook.mount"
else
    mount -t tmpfs tmpfs "/usr/lib/modules/$OTHER" && echo tmpfs > "$O/hook.mount"
fi
mkdir -p "/lib/modules/$OTHER/updates/dkms"
cp "$O"/dkms/*.ko "/lib/modules/$OTHER/updates/dkms/"
mkdir -p /etc/kernel/postinst.d
# as scripts/install-service installs it
install -m 0755 scripts/kernel/zz-btfreconciled /etc/kernel/postinst.d/zz-btfreconciled
/etc/kernel/postinst.d/zz-btfreconciled "$OTHER" "/boot/vmlinuz-$OTHER" > "$O/hook.out" 2> "$O/hook.err"
echo $? > "$O/hook.rc"
ctl status > "$O/hook.status.txt" 2>&1
ctl status --json > "$O/hook.status.json" 2>&1
cp "/var/cache/btfreconciled/pre-reboot/$OTHER.json" "$O/hook.report.json" 2>/dev/null
stamp hook

# ---- issue 11 item 2: the file replaced under the loaded module
insmod "$MODS/$E.ko" > "$O/c.insmod" 2>&1; echo $? > "$O/c.insmod.rc"
wait_verdict $E "$O/c.show.json"; echo $? > "$O/c.wait.rc"
ctl path $E > "$O/c.path.txt" 2> "$O/c.path.err"; echo $? > "$O/c.path.rc"
cat /sys/module/$E/notes/.note.gnu.build-id > "$O/c.loaded-note" 2>/dev/null
cp "$O/new/$E.ko" "$MODS/.$E.ko.new" && mv "$MODS/.$E.ko.new" "$MODS/$E.ko"
# the daemon watches its module directories; SIGHUP (a rescan) only if it missed that
if wait_verdict $E "$O/d.show.json" stale-file 30; then
    echo watch > "$O/d.trigger"
else
    echo sighup > "$O/d.trigger"
    kill -HUP $DPID
    wait_verdict $E "$O/d.show.json" stale-file
fi
echo $? > "$O/d.wait.rc"
ctl show $E > "$O/d.show.txt" 2>&1
ctl path $E > "$O/d.path.txt" 2> "$O/d.path.err"; echo $? > "$O/d.path.rc"
ls -la /var/cache/btfreconciled/current/modules/ > "$O/d.cache-ls.txt" 2>&1
stamp stale-file
rmmod $E; echo $? > "$O/e.rmmod.rc"
grep -E '"module files changed|"rescan"' "$O/daemon.log" > "$O/d.daemon-triggers" 2>&1
wait_gone $E
insmod -f "$MODS/$E.ko" > "$O/e.insmod" 2>&1; echo $? > "$O/e.insmod.rc"
[ -e /sys/kernel/btf/$E ] && echo yes > "$O/e.kernel-btf" || echo no > "$O/e.kernel-btf"
wait_verdict $E "$O/e.show.json" rescued; echo $? > "$O/e.wait.rc"
ctl show $E > "$O/e.show.txt" 2>&1
ctl path $E > "$O/e.path.txt" 2> "$O/e.path.err"; echo $? > "$O/e.path.rc"
p=$(cat "$O/e.path.txt")
[ -n "$p" ] && [ -f "$p" ] && cp "$p" "$O/e.ours.btf"
stamp reloaded

ctl list > "$O/list.txt" 2>&1
dmesg > "$O/dmesg"
kill -TERM $DPID; wait $DPID; echo $? > "$O/daemon.rc"
stamp stopped
kill $CTL_ZYGOTE
echo done > "$O/complete"
