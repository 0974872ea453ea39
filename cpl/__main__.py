"""``python -m cpl`` (also what ``torchrun -m cpl`` runs)."""

import sys

from cpl.cli import main

sys.exit(main())
