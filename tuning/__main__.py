"""`python -m tuning`: the same as the `tuning` command."""

import sys

from tuning.command import main

sys.exit(main())
