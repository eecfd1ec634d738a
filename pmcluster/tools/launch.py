"""How a node process is launched, the same way by every launcher.

`pacemaker.childopts` (Storm's options for the Pacemaker JVM) are, for pmcluster, options of
the Python interpreter that runs the node (e.g. `-X faulthandler`); `pmcluster up`, the test
harness, `pmcluster add-node` and the systemd unit all start `python <childopts> -m pmcluster
node --config FILE`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def node_argv(config_path: Path, childopts: str = "", python: str = sys.executable) -> list[str]:
    """The node's command line: `childopts` are the interpreter's options."""
    return [
        python,
        *shlex.split(childopts),
        "-m",
        "pmcluster",
        "node",
        "--config",
        str(config_path),
    ]
