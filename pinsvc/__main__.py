import sys

from pinsvc.cli import main

sys.exit(main())
