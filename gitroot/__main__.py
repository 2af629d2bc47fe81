import sys

from gitroot.cli import main

sys.exit(main())
