# SPDX-License-Identifier: MIT
#
# The demo's RAUC system configuration (files/system.conf, an example A/B layout: adapt it) and
# keyring: ca.cert.pem from MIGRATION_RAUC_KEYS when meta-rauc's scripts/openssl-ca.sh made one
# there (a development CA, for tests only), else meta-rauc's placeholder, which rauc-conf warns
# about at build time.
# meta-rauc's README gives rauc-conf its files so; parsed only with meta-rauc (BBFILES_DYNAMIC).
# nooelint: oelint.vars.noncoreoverride
FILESEXTRAPATHS:prepend := "${THISDIR}/files:${MIGRATION_RAUC_KEYS}:"
