"""Holding out part of the training pictures for the validation loss (``validation_split``)."""

from __future__ import annotations

import dataclasses
import logging

from library.data.dataset import derive_rng
from library.data.scan import ImageItem
from library.data.specs import DatasetSpec

logger = logging.getLogger(__name__)


def split_validation(items: list[ImageItem], specs: list[DatasetSpec],
                     training_seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training items, validation items): ``int(n × validation_split)`` pictures of each training subset.

    Regularisation pictures are never held out (as in sd-scripts). The draw is a pure function of the
    dataset's ``validation_seed`` (the training seed when unset) and the image paths, so a resumed run
    holds out the same pictures. Held-out pictures count once (repeats = 1).
    """
    groups: dict[tuple[int, int], list[ImageItem]] = {}
    for item in items:
        if not item.is_reg and specs[item.dataset_index].validation_split > 0:
            groups.setdefault((item.dataset_index, item.subset_index), []).append(item)
    held_out: list[ImageItem] = []
    held_ids: set[int] = set()
    for (d, s), members in sorted(groups.items()):
        spec = specs[d]
        seed = training_seed if spec.validation_seed is None else spec.validation_seed
        order = sorted(members, key=lambda it: str(it.path))
        derive_rng("validation split", seed, d, s).shuffle(order)
        count = int(len(order) * spec.validation_split)
        if count == 0:
            logger.warning("validation_split = %s holds out no picture of '%s' (%d pictures)",
                           spec.validation_split, members[0].folder, len(members))
        held_out.extend(dataclasses.replace(it, repeats=1) for it in order[:count])
        held_ids.update(id(it) for it in order[:count])
    return [it for it in items if id(it) not in held_ids], held_out
