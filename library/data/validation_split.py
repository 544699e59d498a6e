"""Holding out part of the training pictures for the validation loss (``validation_split``)."""

from __future__ import annotations

import dataclasses
import logging

from library.data.dataset import derive_rng
from library.data.scan import ImageItem
from library.data.specs import DatasetSpec
from library.errors import DatasetError

logger = logging.getLogger(__name__)


def split_validation(items: list[ImageItem], specs: list[DatasetSpec],
                     training_seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training items, validation items): ``int(n × validation_split)`` pictures of each training subset
    (the subset's own validation_split and validation_seed, else its dataset's; 1.0 holds out all of them, as
    sd-scripts' docs use for a validation-only folder).

    Regularisation pictures are never held out (as in sd-scripts). The draw is a pure function of the
    dataset's ``validation_seed`` (the training seed when unset) and the image paths, so a resumed run
    holds out the same pictures. Held-out pictures count once (repeats = 1).
    """
    groups: dict[tuple[int, int], list[ImageItem]] = {}
    for item in items:
        spec = specs[item.dataset_index]
        if not item.is_reg and spec.subset_validation(spec.subsets[item.subset_index])[0] > 0:
            groups.setdefault((item.dataset_index, item.subset_index), []).append(item)
    held_out: list[ImageItem] = []
    held_ids: set[int] = set()
    for (d, s), members in sorted(groups.items()):
        share, seed = specs[d].subset_validation(specs[d].subsets[s])
        seed = training_seed if seed is None else seed
        order = sorted(members, key=lambda it: str(it.path))
        derive_rng("validation split", seed, d, s).shuffle(order)
        count = int(len(order) * share)
        if count == 0:
            logger.warning("validation_split = %s holds out no picture of '%s' (%d pictures)",
                           share, members[0].folder, len(members))
        held_out.extend(dataclasses.replace(it, repeats=1) for it in order[:count])
        held_ids.update(id(it) for it in order[:count])
    train = [it for it in items if id(it) not in held_ids]
    if not any(not it.is_reg for it in train):
        raise DatasetError(
            "validation_split holds out every training picture (validation_split = 1.0 on every training subset), "
            "so nothing is left to train on. Keep validation_split = 1.0 for the subsets meant for validation "
            "only, and give the training subsets a smaller share (or none)."
        )
    return train, held_out
