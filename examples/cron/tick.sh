#!/bin/sh
# tick.sh RUN_DIR [extra cai args]: one `cai batch tick RUN_DIR` for cron or a systemd timer, its output
# appended to RUN_DIR/batch.log after a timestamped header line; exits with cai's exit code
# (0 progress or nothing to do, 75 still waiting on the provider, ...: see docs/batch.md).
#
# The log stays bounded: once it exceeds CAI_LOG_MAX_BYTES (default 1048576) it becomes batch.log.1,
# replacing the previous one. The cai executable is $CAI if set, else `cai` on PATH.
# RUN_DIR is never created: while it is not a folder (before the first `cai batch submit`) cai's error
# goes to stderr (cron mails it) instead of a log.
set -u

if [ "$#" -lt 1 ]; then
    echo "usage: tick.sh RUN_DIR [extra cai args]" >&2
    exit 2
fi
run=$1
shift
cai=${CAI:-cai}

if [ ! -d "$run" ]; then
    exec "$cai" batch tick "$run" "$@"
fi

log=$run/batch.log
max=${CAI_LOG_MAX_BYTES:-1048576}
case $max in
    '' | *[!0-9]*) echo "tick.sh: CAI_LOG_MAX_BYTES must be a number of bytes, not '$max'" >&2; exit 2 ;;
esac
if [ -f "$log" ] && [ "$(($(wc -c < "$log")))" -gt "$max" ]; then
    mv -f "$log" "$log.1"
fi
printf '== %s cai batch tick %s%s (pid %s)\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$run" "${*:+ $*}" "$$" >> "$log"
exec "$cai" batch tick "$run" "$@" >> "$log" 2>&1
