"""`python -m lm.cli ...` runs the `lm` command."""

import sys

from lm.cli import main

sys.exit(main())
