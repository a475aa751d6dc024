#!/usr/bin/env bash
# Starts fastntp on unprivileged ports, lets a real NTP client ask it the
# time, and says plainly what the time is worth: whether a backend chronyd
# synchronizes it, and to what. `make demo` installs chrony first if it is
# missing. The demo exits non-zero unless the client accepted fastntp's time.
#
# Environment: FASTNTP_DEMO_PORT (default 12123) is the port fastntp serves.
set -euo pipefail
bin=${1:-bin/fastntp}
benchbin="$(dirname "$bin")/fastntp-bench"
port=${FASTNTP_DEMO_PORT:-12123}
backend=127.0.0.1:11123
work=$(mktemp -d)
pids=()
private=
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

if ! command -v chronyd >/dev/null; then
	echo "fastntp needs chrony: run 'make demo', which installs it (apt-get install chrony)." >&2
	exit 1
fi

# probe exits 0 for a synchronized server, 3 for one that answers
# unsynchronized (a chronyd still starting), 1 for none.
answers() {
	local rc=0
	"$benchbin" probe --timeout "$2" "$1" >/dev/null 2>&1 || rc=$?
	[ "$rc" = 0 ] || [ "$rc" = 3 ]
}

if answers "$backend" 1s; then
	say "A backend already answers on $backend; fastntp mirrors it."
else
	backend=127.0.0.1:$((port + 1))
	private=yes
	say "Nothing answers on 127.0.0.1:11123, so this demo starts a private chronyd on $backend."
	echo "   It has 'local stratum 10': it serves its own clock and is NOT synchronized to any real"
	echo "   time source. In production, chronyd there syncs to real servers (see README)."
	cat >"$work/chrony.conf" <<CONF
port ${backend##*:}
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
	for _ in $(seq 50); do
		answers "$backend" 200ms && break
		sleep 0.1
	done
fi

say "Starting fastntp on 127.0.0.1:$port and [::1]:$port (backend $backend)"
"$bin" -a "127.0.0.1:$port" -b "[::1]:$port" -s "$backend" --stats-interval 0 >"$work/fastntp.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
	grep -q 'synchronized to backend' "$work/fastntp.log" && break
	sleep 0.1
done
cat "$work/fastntp.log"

say "fastntp-bench probe 127.0.0.1:$port: the reply's fields"
"$benchbin" probe "127.0.0.1:$port" || true

say "chronyd -Q, a real NTP client, measures this clock against fastntp over IPv6"
# chronyd -Q only accepts a synchronized server: leap 3 is refused.
out=$(chronyd -Q -t 5 -f /dev/null "server ::1 port $port iburst maxsamples 1" 2>&1 || true)
printf '%s\n' "$out" | grep -v -e starting -e exiting || true
if printf '%s\n' "$out" | grep -q 'System clock wrong by'; then
	if [ "$(id -u)" = 0 ]; then
		say "fastntp warned above that it runs as root: the demo starts it as you, root here. On a server it runs unprivileged, as its systemd unit runs it, or with -u USER."
	fi
	if [ -n "$private" ]; then
		say "The client accepted fastntp's time as synchronized. Done; stopping fastntp and the private chronyd."
	else
		say "The client accepted fastntp's time as synchronized. Done; stopping fastntp."
	fi
else
	say "The client did not accept fastntp's time; fastntp's log is above."
	exit 1
fi
