"""`python -m loraplus.cli ...` runs `loraplus` (torchrun and accelerate launch a module)."""

import sys

from loraplus.cli import main

sys.exit(main())
