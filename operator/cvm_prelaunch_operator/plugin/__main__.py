"""``python -m cvm_prelaunch_operator.plugin``: the same as ``kubectl cpls``."""

import sys

from cvm_prelaunch_operator.plugin.cli import main

sys.exit(main())
