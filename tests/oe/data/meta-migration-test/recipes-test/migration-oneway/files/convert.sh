#!/bin/sh
# Converts the data to a format the previous release cannot read.
set -eu
touch /var/lib/oneway-converted
