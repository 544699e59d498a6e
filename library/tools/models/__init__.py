"""LoRA and checkpoint tools: merge, extract, resize, model merging, conversion and inspection.

Each module holds the logic of one ``tools/*.py`` CLI; they share the LoRA key contract
(:mod:`library.networks.keys`), the LoRA math (:mod:`library.networks.functional`) and the model
conversion (:mod:`library.models.ldm_convert`).
"""
