import sys

from ssdbench.cli import main

sys.exit(main())
