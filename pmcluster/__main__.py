"""`python -m pmcluster` runs the command line."""

import sys

from pmcluster.cli import main

sys.exit(main())
