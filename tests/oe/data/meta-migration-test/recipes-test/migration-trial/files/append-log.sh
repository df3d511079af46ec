#!/bin/sh
# Not idempotent: every run appends another line.
set -eu
echo "migrated" >>/var/lib/app/log
