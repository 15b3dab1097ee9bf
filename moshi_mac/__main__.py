"""`python -m moshi_mac`: the `moshi-mac` command."""

import sys

from .cli import main

sys.exit(main())
