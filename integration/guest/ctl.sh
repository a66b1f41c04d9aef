# Sourced by guest scripts (sh): starts ctl_zygote.py and defines `ctl ARGS...`, which runs
# `btfreconcilectl ARGS...` in a fork of that warm process (see its header for why) with
# the caller's stdout, stderr and exit status; `ctl field FILE KEY[.KEY]` prints a field
# of a JSON file, and `settled FILE` is true when a `show --json` record is not pending.  The call runs in the caller's directory but with the zygote's environment.
# Needs REPO (the checkout) or runs from it.
CTL_FIFO=$(mktemp -u /tmp/ctl-fifo.XXXXXX)
mkfifo "$CTL_FIFO"
python3 "${REPO:-$PWD}/integration/guest/ctl_zygote.py" "$CTL_FIFO" &
CTL_ZYGOTE=$!
ctl() {
    kill -0 "$CTL_ZYGOTE" 2>/dev/null || { echo "ctl: ctl_zygote.py is not running" >&2; return 125; }
    q=$(mktemp -d /tmp/ctlq.XXXXXX) || return 125
    printf '%s\000' "$@" > "$q/argv"
    printf '%s' "$PWD" > "$q/cwd"
    mkfifo "$q/rc"
    echo "$q" > "$CTL_FIFO"
    read rc < "$q/rc"
    cat "$q/out"; cat "$q/err" >&2
    rm -rf "$q"
    return "${rc:-125}"
}
settled() { [ "$(ctl field "$1" pending)" = false ]; }
