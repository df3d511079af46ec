# SPDX-License-Identifier: MIT
# tests/oe: a bbappend replaces one file of the runner recipe (its boot notes), the usual way.
# nooelint: oelint.vars.noncoreoverride
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
