#!/bin/bash
set -euo pipefail
shopt -s nullglob
for f in /var/lib/interp/*.old; do mv "$f" "${f%.old}.new"; done
