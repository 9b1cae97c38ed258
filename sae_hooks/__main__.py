"""``python -m sae_hooks`` is the ``sae-hooks`` command (torchrun needs a module to run)."""

import sys

from .cli import main

sys.exit(main())
