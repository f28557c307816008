"""`python -m browser` runs the imago command."""
import sys

from browser.cli import main

sys.exit(main())
