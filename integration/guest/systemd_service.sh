#!/bin/sh
# Runs inside `vm/run --init systemd` (systemd is PID 1): installs btfreconciled the way a
# user does and puts the unit through what only a real systemd can show.  Records everything
# into OUT for integration/test_systemd_vm.py to judge; it asserts nothing itself, except that
# it stops early (status 3) when the service cannot be installed or started at all.
#
# usage: VENV_TAR=TAR INSTALL=HOW systemd_service.sh OUT FIXTURE_DIR MODULE...
#   TAR: /opt/btfreconciled as scripts/install-deps made it from this checkout in a chroot of
#   this same root (test_systemd_vm.py); then HOW installs the unit over it:
#   `setup-and-run` (the whole of scripts/setup-and-run) or `install-service` (its service
#   path only)
set -u
O=$1; FX=$2; shift 2
MODS="$*"
REPO=$PWD  # vm/run starts commands in the checkout
REL=$(uname -r)
U=btfreconciled.service
now() { cut -d' ' -f1 /proc/uptime; }   # guest seconds since the kernel started
mark() { echo "$1 $(now)" >> "$O/marks"; }
prop() { systemctl show "$U" -P "$1"; }
status_json() { btfreconcilectl status --json > "$1" 2>/dev/null; }
# py EXPR FILE: evaluate EXPR on the JSON in FILE (as r); exit status 0 when true
py() { python3 -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if ($1) else 1)" "$2" 2>/dev/null; }
dump_journal() { journalctl -u "$U" -o json --no-pager > "$O/$1" 2>&1; }
settled() {  # wait until the daemon has worked through its queue after a rescan
    i=0
    until status_json "$O/.st.json" \
        && py 'r["stats"]["rescans"] and not r["queue"]["pending"] and r["queue"]["busy"] is None and r["last_rescan"]' "$O/.st.json"; do
        i=$((i + 1)); [ $i -gt 600 ] && return 1; sleep 0.1
    done
}
fail() { echo "guest: $*" >&2; dump_journal journal-failed.json; journalctl -b --no-pager -n 200 > "$O/journal-boot.txt" 2>&1; exit 3; }

echo "$REL" > "$O/uname"
systemctl --version | head -n1 > "$O/systemd.version"
mark begin

# -- the fixtures in a directory of their own, named in the config (extra_module_dirs): the
# kernel's updates/ tree would need `depmod -a`, ~100 s over the whole module tree under TCG
FIXDIR=/usr/local/lib/btfr-fixtures
mkdir -p "$FIXDIR"
for m in $MODS; do cp "$FX/$m.ko" "$FIXDIR/"; done
# A user's configuration (install-service keeps an existing one), at debug level so that
# library messages (asyncio says which selector it uses at start-up) reach the journal too.
mkdir -p /etc/btfreconciled
printf '# written by the systemd VM test\nextra_module_dirs = ["%s"]\nlog_level = "debug"\n' \
    "$FIXDIR" > /etc/btfreconciled/btfreconciled.toml

# -- install as a user does: a copy of the checkout, then scripts/setup-and-run (install-deps,
# then, systemd being PID 1, install-service).  Its pip step already ran natively, over the
# same files in a chroot of this root (2-8 minutes of pip under TCG, none of it about
# systemd): install-deps finds the virtualenv holding this checkout and skips pip, as it does
# for a user who runs setup-and-run again.  No network in the guest: pip would read the
# wheels vm/setup downloaded (the standard offline install).
sh "$REPO/integration/guest/copy_checkout.sh" "$REPO" /root/btfreconciled
cd /root/btfreconciled || exit 3
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$BTFRECONCILED_CACHE_ROOT/wheels"
mark install-start
tar -C / -xf "$VENV_TAR" || fail "cannot restore the virtualenv from $VENV_TAR"
if [ "$INSTALL" = setup-and-run ]; then
    scripts/setup-and-run > "$O/install.out" 2>&1
else
    # setup-and-run as a whole is judged on one kernel's boot; on the others, what this
    # boot is about -- the unit on this kernel -- is setup-and-run's service path from the
    # point install-deps leaves it (the command links), without its `inspect` of the whole
    # vmlinux BTF and install-deps' checks: the same Python on every kernel, 25 s under TCG
    # alone, a minute or two under load.
    {
        ln -sfn /opt/btfreconciled/bin/btfreconcilectl /opt/btfreconciled/bin/btfreconciled \
            /usr/local/bin/ \
        && scripts/install-service --bindir /opt/btfreconciled/bin && settled \
        && btfreconcilectl status
    } > "$O/install.out" 2>&1
fi
echo $? > "$O/install.rc"
mark install-end
cd /
[ "$(cat "$O/install.rc")" = 0 ] || fail "$INSTALL failed"
cp /etc/systemd/system/$U "$O/installed.service"
systemctl is-enabled $U > "$O/is-enabled" 2>&1
systemctl show $U -p Type -p NotifyAccess -p WatchdogUSec -p Restart -p DynamicUser \
    -p ExecReload -p FragmentPath > "$O/unit.props"

# -- stop (started by install-service), then start without waiting and watch: under
# Type=notify the unit must stay "activating" while the daemon indexes the kernel's BTF, and
# turn "active" only with READY=1.
S0=$(now); systemctl stop $U; S1=$(now)
echo "$S0 $S1" > "$O/stop1.times"
systemctl start --no-block $U
i=0
while :; do
    line="$(now) $(systemctl show $U -p ActiveState -p SubState -p MainPID -p StatusText | tr '\n' '|')"
    echo "$line" >> "$O/start-poll"
    case "$line" in
        *ActiveState=active*) break ;;
        *ActiveState=failed*) fail "the service failed to start" ;;
    esac
    i=$((i + 1)); [ $i -gt 1500 ] && fail "the service did not become active"
done
btfreconcilectl status --json > "$O/status-at-active.json" 2> "$O/status-at-active.err"
echo $? > "$O/status-at-active.rc"
systemctl show $U -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic \
    -p WatchdogTimestampMonotonic -p MainPID -p StatusText > "$O/ready.props"
mark ready
MP=$(prop MainPID)
readlink /proc/1/ns/net > "$O/netns.init"
readlink "/proc/$MP/ns/net" > "$O/netns.service"
UID_GID=$(stat -c '%u %g' "/proc/$MP")
echo "$UID_GID" > "$O/main.ids"
getent passwd "${UID_GID% *}" > "$O/main.passwd" 2>&1
systemd-analyze security $U --no-pager > "$O/security.txt" 2>&1
settled || fail "the start-up rescan did not finish"

# -- every fixture through its uevent: insmod, then the verdict from btfreconcilectl
for m in $MODS; do
    insmod "$FIXDIR/$m.ko" > "$O/$m.insmod" 2>&1; echo $? > "$O/$m.insmod.rc"
    i=0
    # grep, not python: every process start costs seconds under TCG on a busy machine
    until btfreconcilectl show --json "$m" > "$O/$m.show.json" 2>/dev/null \
        && grep -q '"pending": false' "$O/$m.show.json"; do
        i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.1
    done
    btfreconcilectl show "$m" > "$O/$m.show.txt" 2>&1
    btfreconcilectl path "$m" > "$O/$m.path.txt" 2> "$O/$m.path.err"; echo $? > "$O/$m.path.rc"
    p=$(cat "$O/$m.path.txt")
    [ -n "$p" ] && [ -f "$p" ] && cp "$p" "$O/$m.ours.btf"
    [ -e "/sys/kernel/btf/$m" ] && cp "/sys/kernel/btf/$m" "$O/$m.kernel.btf"
done
btfreconcilectl status > "$O/status1.txt" 2>&1
status_json "$O/status1.json"
mark modules

# -- what the dynamic user can read and write, seen from inside the unit's mount namespace
# (ProtectSystem=, ProtectHome=, PrivateTmp= ...) with its uid and gid
nsenter -t "$MP" -m -S "${UID_GID% *}" -G "${UID_GID#* }" -- \
    python3 - "$REL" "$FIXDIR" $MODS < "$REPO/integration/guest/sandbox_access.py" \
    > "$O/access.json" 2> "$O/access.err"
echo $? > "$O/access.rc"

# -- reload: SIGHUP through ExecReload=, the daemon re-reads its config and rescans
status_json "$O/before-reload.json"
systemctl reload $U > "$O/reload.out" 2>&1; echo $? > "$O/reload.rc"
i=0
until status_json "$O/after-reload.json" \
    && py 'any(e["action"] == "rescan" and e["source"] == "SIGHUP" for e in r["last_events"])' "$O/after-reload.json"; do
    i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.1
done
settled
btfreconcilectl status > "$O/status-after-reload.txt" 2>&1
systemctl show $U -p ActiveState -p SubState > "$O/after-reload.props"

# -- the watchdog: WatchdogSec=60s, the daemon pings every 30 s; wait for one ping after
# READY (the test above usually takes longer than that under TCG anyway)
READY_AT=$(grep '^ready ' "$O/marks" | cut -d' ' -f2)
while [ "$(python3 -c "import sys; print(int(float(sys.argv[1]) - float(sys.argv[2]) < 33))" "$(now)" "$READY_AT")" = 1 ]; do
    sleep 1
done
systemctl show $U -p WatchdogTimestampMonotonic -p MainPID > "$O/watchdog.props"
dump_journal journal-before-kill.json

# -- kill -9: Restart=on-failure brings it back, and the new process reuses the cache
stat -c '%n %i %Y' /var/cache/btfreconciled/current/modules/*.btf > "$O/cache-before-kill" 2>&1
echo "$MP" > "$O/killed.pid"
kill -9 "$MP"
i=0
until [ "$(prop NRestarts)" -ge 1 ] && [ "$(prop ActiveState)" = active ] \
    && [ "$(prop MainPID)" != "$MP" ]; do
    i=$((i + 1)); [ $i -gt 900 ] && break; sleep 0.2
done
systemctl show $U -p NRestarts -p ActiveState -p MainPID -p Result > "$O/after-kill.props"
settled
status_json "$O/after-restart.json"
stat -c '%n %i %Y' /var/cache/btfreconciled/current/modules/*.btf > "$O/cache-after-restart" 2>&1
mark restarted

# -- stop: SIGTERM, the daemon exits cleanly and fast (no stop timeout, no SIGKILL)
S0=$(now); systemctl stop $U; S1=$(now)
echo "$S0 $S1" > "$O/stop2.times"
systemctl show $U -p Result -p ExecMainCode -p ExecMainStatus -p ActiveState > "$O/stop2.props"
[ -e /run/btfreconciled/control.sock ] && echo present > "$O/socket-after-stop" \
    || echo gone > "$O/socket-after-stop"
dump_journal journal.json
# what systemd itself said during the whole boot (unit file warnings land here)
journalctl -b _PID=1 -o json --no-pager > "$O/pid1.json" 2>&1
mark end
echo done > "$O/complete"
