#!/usr/bin/env bash
# Starts fastntp on unprivileged ports, lets a real NTP client ask it the
# time, and says plainly what the time is worth: whether a backend chronyd
# synchronizes it, and to what.
set -euo pipefail
bin=${1:-bin/fastntp}
benchbin="$(dirname "$bin")/fastntp-bench"
port=12123
backend=127.0.0.1:11123
work=$(mktemp -d)
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

if "$benchbin" probe --timeout 1s "$backend" >/dev/null 2>&1; then
	say "A backend already answers on $backend; fastntp mirrors it."
elif command -v chronyd >/dev/null; then
	backend=127.0.0.1:11124
	say "Nothing answers on 127.0.0.1:11123, so this demo starts a private chronyd on $backend."
	echo "   It has 'local stratum 10': it serves its own clock and is NOT synchronized to any real"
	echo "   time source. In production, chronyd there syncs to real servers (see README)."
	cat >"$work/chrony.conf" <<CONF
port 11124
bindaddress 127.0.0.1
allow 127.0.0.1
cmdport 0
bindcmdaddress /
local stratum 10
pidfile $work/chronyd.pid
CONF
	user=(); [ "$(id -u)" = 0 ] && user=(-u root)
	chronyd -x -d -f "$work/chrony.conf" "${user[@]}" >"$work/chronyd.log" 2>&1 &
	pids+=($!)
	sleep 0.5
else
	say "No backend and no chronyd installed: fastntp will answer, honestly, as unsynchronized (leap 3)."
fi

say "Starting fastntp on 127.0.0.1:$port and [::1]:$port (backend $backend)"
"$bin" -a "127.0.0.1:$port" -b "[::1]:$port" -s "$backend" --stats-interval 0 >"$work/fastntp.log" 2>&1 &
pids+=($!)
for _ in $(seq 30); do
	grep -qE 'synchronized to backend|serving unsynchronized' "$work/fastntp.log" && break
	sleep 0.1
done
cat "$work/fastntp.log"

say "fastntp-bench probe 127.0.0.1:$port"
"$benchbin" probe "127.0.0.1:$port"

if command -v chronyd >/dev/null; then
	say "chronyd -Q, a real NTP client, measures its clock against fastntp over IPv6"
	chronyd -Q -t 5 -f /dev/null "server ::1 port $port iburst maxsamples 1" 2>&1 | grep -v -e starting -e exiting || true
fi
say "Done; stopping fastntp."
