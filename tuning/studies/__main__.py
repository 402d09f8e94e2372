"""`python -m tuning.studies`: the same as `tuning studies`."""

import sys

from tuning.command import list_studies

sys.exit(list_studies(sys.argv[1:], prog="python -m tuning.studies"))
