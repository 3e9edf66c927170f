"""``python -m components``: serve a realtime endpoint or transcribe a file (see cli/main.py)."""

import sys

from components.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
