"""Dataset tools: WD14 tagging, BLIP/GIT captioning, caption edits, dataset preparation and the dataset check.

Each ``tools/*.py`` command is a thin CLI over one module here, so the GUI can call the same functions.
"""
