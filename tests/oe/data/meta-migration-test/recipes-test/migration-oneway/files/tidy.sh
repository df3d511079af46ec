#!/bin/sh
set -eu
rm -f /var/lib/oneway-cache
