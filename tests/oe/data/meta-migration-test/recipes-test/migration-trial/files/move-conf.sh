#!/bin/sh
# Idempotent: a second run finds nothing to do.
set -eu
mkdir -p /var/lib/app/v2
if [ -e /etc/app.conf ]; then
    mv -f /etc/app.conf /var/lib/app/v2/app.conf
fi
