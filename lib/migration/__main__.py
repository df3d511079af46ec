# SPDX-License-Identifier: MIT
"""`python3 -m migration`: the same entry point as the installed `migration` command."""

import sys

from migration.cli import main

sys.exit(main())
