"""`python -m task_queue` runs the `task-queue` command."""

import sys

from .cli import main

sys.exit(main())
