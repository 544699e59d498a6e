"""Start the training GUI: python gui.py [--listen ADDR --username U --password P] [--share] [--port N]
[--allowed_hosts NAME ...] [--allowed_paths FOLDER ...]; served to other machines it needs a login."""

import os
import sys

# no usage telemetry to Gradio's servers unless the user opts in (the GUI is often run on private data)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from library.gui.app import main  # noqa: E402  (after the environment is set)

if __name__ == "__main__":
    sys.exit(main())
