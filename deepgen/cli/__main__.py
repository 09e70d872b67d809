"""`python -m deepgen.cli ...`: the `deepgen` command."""

import sys

from deepgen.cli import main

sys.exit(main())
