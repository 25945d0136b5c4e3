import sys

from vitalstats.cli import main

sys.exit(main())
