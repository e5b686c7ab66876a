import sys

from cvm_prelaunch_operator.cli import main

sys.exit(main())
