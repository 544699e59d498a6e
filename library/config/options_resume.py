"""Options of resuming a run from a training state (``resume``, ``save_state`` and the rest are in ``options.py``)."""

from __future__ import annotations

from library.config.schema import Option

OPTIONS = [
    Option(
        "resume_inexact",
        "bool",
        False,
        "Resume from a state folder even when parts of it are missing, broken or unsafe pickles: those parts "
        "start afresh (with a warning) and the run is no longer bit-exact. The trained weights are always needed.",
        "saving",
    ),
]
