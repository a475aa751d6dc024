#!/bin/sh
# copyright.sh BINARY-PACKAGE...: prints the package's copyright file:
# fastntp's own notice, then the notice and licence of every Go module
# linked into the given commands, from the module cache, for a static
# binary carries them all.
set -eu
cd "$(dirname "$0")/../.."
cat <<'HEAD'
fastntp, a high-throughput NTP server that mirrors a local chronyd.

Copyright: the fastntp developers.
License: the fastntp developers have not chosen a licence yet; until they
do, no licence to fastntp's own code is granted by this package.

The programs in this package are statically linked Go binaries. They
contain the Go standard library and the following modules, whose notices
and licences follow.
HEAD
# common_licenses prints a licence file, with the full text of a licence
# Debian ships in /usr/share/common-licenses replaced by a pointer to it,
# as Debian policy asks (12.5).
common_licenses() {
	awk '
	/^[ \t]*Apache License[ \t]*$/ {
		print "The Apache License, Version 2.0: /usr/share/common-licenses/Apache-2.0."
		exit
	}
	/^[ \t]*GNU GENERAL PUBLIC LICENSE[ \t]*$/ {
		print "The GNU General Public License, version 2: /usr/share/common-licenses/GPL-2."
		exit
	}
	{ print }' "$1"
}

go list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' "$@" | sort -u |
while read -r path version dir; do
	printf '\n-----\n%s %s\n\n' "$path" "$version"
	found=
	for f in "$dir"/LICENSE* "$dir"/LICENCE* "$dir"/COPYING* "$dir"/License* "$dir"/NOTICE*; do
		[ -f "$f" ] || continue
		common_licenses "$f"
		found=yes
	done
	[ -n "$found" ] || { echo "copyright.sh: no licence file in $dir" >&2; exit 1; }
done
printf '\n-----\nThe Go standard library %s\n\n' "$(go env GOVERSION)"
cat "$(go env GOROOT)/LICENSE"
