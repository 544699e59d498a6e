"""Start the training GUI: python gui.py [--listen ADDR] [--port N] [--share] [--username U --password P]."""

import sys

from library.gui.app import main

if __name__ == "__main__":
    sys.exit(main())
