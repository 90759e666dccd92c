"""`python -m nasrec.cli`: the `nasrec` command."""

import sys

from nasrec.cli import main

sys.exit(main())
