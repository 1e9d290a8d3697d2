#!/usr/bin/env bash
# Headless Chromium and its chromedriver for tests/gateway/test_console.py, without root: Debian's
# chromium-headless-shell, chromium-common and chromium-driver unpacked into DEST with `dpkg -x`, plus the
# shared libraries they depend on that this machine lacks (their lib* dependencies, followed until none is
# missing). `apt-get download` needs only apt's package lists; they are refreshed (as root, or with sudo)
# only when a download fails. Writes DEST/bin/chromium and DEST/bin/chromedriver, wrappers that put the
# unpacked libraries on LD_LIBRARY_PATH, then checks with ldd that every library is found.
#
#   tests/gateway/install_chromium.sh DEST
set -euo pipefail

dest=$(realpath -m "${1:?usage: $0 DEST}")
download="$dest.download"
as_root=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
rm -rf "$download" "$dest"
mkdir -p "$download"

get() {
	(cd "$download" && apt-get download -q "$@") \
		|| { $as_root apt-get update -q && (cd "$download" && apt-get download -q "$@"); }
}

installed() {
	dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed
}

get chromium-headless-shell chromium-common chromium-driver
todo="chromium-headless-shell chromium-driver"
seen=""
while [ -n "$todo" ]; do
	missing=""
	for dep in $(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
			--no-enhances $todo | sed -n 's/^  Depends: \(lib[^ <>]*\)$/\1/p' | sort -u); do
		case " $seen " in *" $dep "*) continue ;; esac
		seen="$seen $dep"
		installed "$dep" || missing="$missing $dep"
	done
	if [ -n "$missing" ]; then
		# shellcheck disable=SC2086
		get $missing
	fi
	todo="$missing"
done
for deb in "$download"/*.deb; do
	dpkg -x "$deb" "$dest"
done
rm -rf "$download"

libs=$(find "$dest/usr/lib" -name '*.so*' -not -path "$dest/usr/lib/chromium/*" -printf '%h\n' | sort -u | paste -sd:)
mkdir -p "$dest/bin"
for tool in chromium:usr/lib/chromium/chromium-headless-shell chromedriver:usr/bin/chromedriver; do
	cat >"$dest/bin/${tool%%:*}" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/${tool#*:}" "\$@"
EOF
	chmod +x "$dest/bin/${tool%%:*}"
done

if LD_LIBRARY_PATH="$libs" ldd "$dest/usr/lib/chromium/chromium-headless-shell" "$dest/usr/bin/chromedriver" \
		| grep "not found"; then
	echo "chromium: the shared libraries above are missing" >&2
	exit 1
fi
"$dest/bin/chromedriver" --version
