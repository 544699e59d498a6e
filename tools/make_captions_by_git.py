"""Caption pictures with GIT (transformers) and write one caption file per picture.

python tools/make_captions_by_git.py DIR --model_id microsoft/git-large-textcaps --remove_words
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.caption_cli import GIT_DEFAULTS  # noqa: E402
from library.tools.dataset.caption_cli import main as caption_main


def main(argv: list[str] | None = None) -> int:
    return caption_main(GIT_DEFAULTS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
