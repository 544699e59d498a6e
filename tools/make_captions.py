"""Caption pictures with BLIP (transformers) and write one caption file per picture.

python tools/make_captions.py DIR --caption_weights Salesforce/blip-image-captioning-large --beam_search --num_beams 3
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.dataset.caption_cli import BLIP_DEFAULTS  # noqa: E402
from library.tools.dataset.caption_cli import main as caption_main


def main(argv: list[str] | None = None) -> int:
    return caption_main(BLIP_DEFAULTS, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
