import sys

from spicompute.cli import main

sys.exit(main(None))
