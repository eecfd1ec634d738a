"""`python -m pmcluster.tools.history FILE.jsonl ...`: check a recorded run."""

import sys

from pmcluster.tools.history import main

sys.exit(main())
