#!/bin/sh
# SPDX-License-Identifier: MIT
#
# exampled 2.0 runs as user "exampled" instead of root. Move a device's data over:
#  - create the user: on a device updated from 1.x whose /etc is an overlay, /etc/passwd is the
#    old one from the overlay's upper layer, so the entry useradd put into the new image at
#    build time never reaches it;
#  - give the user its data directory /var/lib/exampled (root-owned until now);
#  - move the configuration from /etc/exampled.conf to /etc/exampled/exampled.conf, keeping
#    the device's own settings.
# Every step checks first, so a run interrupted by a power cut simply runs again.
set -eu

user=exampled
datadir=/var/lib/exampled
old_conf=/etc/exampled.conf
new_conf=/etc/exampled/exampled.conf

if ! grep -q "^$user:" /etc/group; then
	groupadd --system "$user"
fi
if ! grep -q "^$user:" /etc/passwd; then
	useradd --system --gid "$user" --home-dir "$datadir" --no-create-home \
		--shell /sbin/nologin "$user"
fi

mkdir -p "$datadir"
chown -R "$user:$user" "$datadir"

if [ -f "$old_conf" ]; then
	mkdir -p "${new_conf%/*}"
	mv -f "$old_conf" "$new_conf"
fi
if [ -f "$new_conf" ]; then
	chown "root:$user" "$new_conf"
	chmod 0640 "$new_conf"
fi
