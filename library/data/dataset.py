"""The training dataset: a deterministic per-epoch batch plan and batch loading.

The batch plan of an epoch is a pure function of ``(seed, epoch)``, and each batch's random choices
(captions, flips, crops, colour) are a pure function of ``(seed, epoch, step, position)``, so a run
can be resumed exactly and split across processes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from library.data.augment import color_jitter, hflip, to_tensor
from library.data.buckets import Size, cover_size, crop_origin, flipped_crop_left, resize_and_crop
from library.data.captions import process_caption
from library.data.images import load_image, load_image_and_alpha, load_mask_picture
from library.data.scan import ImageItem, balance_datasets, scan_datasets, tag_frequency
from library.data.specs import DatasetSpec, SubsetSpec
from library.data.summary import format_summary

logger = logging.getLogger(__name__)

ItemRef = int
"""Index of an :class:`ImageItem` in ``TrainDataset.items``."""


def derive_rng(*parts: Any) -> random.Random:
    """A ``random.Random`` seeded by a stable hash of ``parts`` (same on every machine and process)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class TrainDataset:
    """Images of one or more datasets, with repeats, reg balancing and aspect-ratio buckets.

    Args:
        specs: the datasets (usually one); each keeps its own buckets and batch size.
        prior_loss_weight: loss weight of regularisation images (train images weigh 1.0).
        max_workers: threads used to probe images.
        items: the images, when already scanned (scanned from ``specs`` otherwise).
    """

    def __init__(
        self, specs: list[DatasetSpec], prior_loss_weight: float = 1.0, max_workers: int = 4,
        items: list[ImageItem] | None = None,
    ) -> None:
        self.specs = specs
        self.prior_loss_weight = float(prior_loss_weight)
        #: ``items`` given: already scanned (e.g. one side of the validation split)
        self.items: list[ImageItem] = scan_datasets(specs, max_workers=max_workers) if items is None else items
        balance_datasets(self.items, len(specs))
        self.latents_cached = False
        #: the crop (left, top) each item's cached latents were encoded from (unflipped), by item
        self.latent_crops: dict[ItemRef, tuple[int, int]] = {}
        #: alpha masks of the centre crops (cached latents), by (item, flipped)
        self._masks: dict[tuple[int, bool], torch.Tensor] = {}
        # (dataset index, bucket) -> item refs, each repeated ``repeats`` times
        self._groups: dict[tuple[int, Size], list[ItemRef]] = {}
        for ref, item in enumerate(self.items):
            self._groups.setdefault((item.dataset_index, item.bucket), []).extend([ref] * item.repeats)
        self._groups = {k: v for k, v in sorted(self._groups.items()) if v}
        #: (processes, batches per optimizer step, steps of the run), for token warm-up (set_step_clock)
        self._step_clock: tuple[int, int, int] | None = None

    # --- counts and metadata -------------------------------------------------------------------
    def subset_of(self, ref: ItemRef) -> SubsetSpec:
        """The subset spec of an item."""
        item = self.items[ref]
        return self.specs[item.dataset_index].subsets[item.subset_index]

    @property
    def num_train_images(self) -> int:
        """Σ repeats × images over training subsets (items per epoch, sd-scripts' num_train_images)."""
        return sum(it.repeats for it in self.items if not it.is_reg)

    @property
    def num_reg_images(self) -> int:
        """Σ folder repeats × images over regularisation subsets (before balancing, as sd-scripts)."""
        return sum(self.subset_of(r).num_repeats for r, it in enumerate(self.items) if it.is_reg)

    @property
    def num_reg_items_per_epoch(self) -> int:
        """Reg samples used per epoch after balancing."""
        return sum(it.repeats for it in self.items if it.is_reg)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """Folder name -> tag -> image count (``ss_tag_frequency``)."""
        return tag_frequency(self.items)

    def _dirs(self, is_reg: bool) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for ref, it in enumerate(self.items):
            if it.is_reg == is_reg:
                entry = out.setdefault(
                    it.folder, {"n_repeats": self.subset_of(ref).num_repeats, "img_count": 0}
                )
                entry["img_count"] += 1
        return out

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """Training folder -> {n_repeats, img_count} (``ss_dataset_dirs``)."""
        return self._dirs(False)

    def reg_dataset_dirs(self) -> dict[str, dict[str, int]]:
        """Regularisation folder -> {n_repeats, img_count} (``ss_reg_dataset_dirs``)."""
        return self._dirs(True)

    def bucket_counts(self) -> dict[tuple[int, Size], int]:
        """(dataset index, bucket) -> samples per epoch (repeats included)."""
        return {k: len(v) for k, v in self._groups.items()}

    def bucket_info(self) -> dict[str, Any]:
        """``ss_bucket_info``: buckets with resolution and count, and the mean aspect-ratio error."""
        buckets = {
            str(i): {"resolution": list(bucket), "count": len(refs)}
            for i, ((_, bucket), refs) in enumerate(self._groups.items())
        }
        errors = [abs(it.size[0] / it.size[1] - it.bucket[0] / it.bucket[1]) for it in self.items]
        return {"buckets": buckets, "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}

    # --- the epoch plan ------------------------------------------------------------------------
    def num_batches(self) -> int:
        """Batches per epoch over all processes: Σ over buckets of ceil(samples / batch size)."""
        return sum(math.ceil(len(refs) / self.specs[d].batch_size) for (d, _), refs in self._groups.items())

    def epoch_batches(self, epoch: int, seed: int) -> list[list[ItemRef]]:
        """The ordered batches of an epoch, a pure function of ``(seed, epoch)``.

        Samples are grouped by (dataset, bucket), shuffled within each group, chunked into batches of
        the dataset's batch size (the last batch of a bucket may be partial), then the batch order is
        shuffled.
        """
        rng = derive_rng("epoch_batches", seed, epoch)
        batches: list[list[ItemRef]] = []
        for (d, _), refs in self._groups.items():
            members = list(refs)
            rng.shuffle(members)
            size = self.specs[d].batch_size
            batches.extend(members[i : i + size] for i in range(0, len(members), size))
        rng.shuffle(batches)
        return batches

    def steps_per_epoch(self, num_processes: int = 1, grad_accum: int = 1) -> int:
        """Optimizer steps per epoch: ceil(ceil(num_batches / num_processes) / grad_accum)."""
        per_process = math.ceil(self.num_batches() / max(1, num_processes))
        return math.ceil(per_process / max(1, grad_accum))

    def set_step_clock(self, num_processes: int, grad_accum: int, max_train_steps: int,
                       max_train_epochs: int | None) -> None:
        """Tell the dataset how plan positions map to optimizer steps (token warm-up needs the step a caption
        is used at); ``max_train_epochs`` wins over ``max_train_steps`` as in the run length."""
        processes, accum = max(1, num_processes), max(1, grad_accum)
        total = max_train_epochs * self.steps_per_epoch(processes, accum) if max_train_epochs else max_train_steps
        self._step_clock = (processes, accum, total)

    def optimizer_step_of(self, epoch: int, index: int) -> tuple[int | None, int]:
        """(optimizer steps done before batch ``index`` of ``epoch``'s plan is used, steps of the run); (None, 0)
        without a step clock (validation: no warm-up). Process ``r`` takes plan positions ``r, r + P, ...``
        (``shard_plan``)."""
        if self._step_clock is None:
            return None, 0
        processes, accum, total = self._step_clock
        before = (epoch - 1) * self.steps_per_epoch(processes, accum)
        return before + (index // processes) // accum, total

    # --- loading -------------------------------------------------------------------------------
    def load_pixels(
        self, ref: ItemRef, rng: random.Random | None, flip: bool
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixels (3, H, W) in [-1, 1] at the item's bucket size and the crop's (left, top).

        The crop is measured in the resized-to-cover picture before any flip (see :meth:`conditioning_crop`).
        ``rng`` None gives a centre crop and no colour jitter; otherwise the subset's random_crop and
        color_aug use it.
        """
        return self._pixels(ref, load_image(self.items[ref].path), rng, flip)

    def _pixels(self, ref: ItemRef, img: Image.Image, rng: random.Random | None,
                flip: bool) -> tuple[torch.Tensor, tuple[int, int]]:
        item, subset = self.items[ref], self.subset_of(ref)
        crop_rng = rng if (rng is not None and subset.random_crop) else None
        img, (left, top), _ = resize_and_crop(img, item.bucket, crop_rng, subset.resize_interpolation)
        if flip:
            img = hflip(img)
        if rng is not None and subset.color_aug:
            img = color_jitter(img, rng)
        return to_tensor(img), (left, top)

    def _masked(self, ref: ItemRef) -> bool:
        return self.items[ref].mask_path is not None or self.subset_of(ref).alpha_mask

    def conditioning_crop(self, ref: ItemRef, crop: tuple[int, int], flip: bool) -> tuple[int, int]:
        """The crop's (left, top) in the picture as trained: ``crop`` is measured in the resized-to-cover
        picture before the flip; a flipped sample's left is measured in the mirrored picture
        (:func:`flipped_crop_left`), as SDXL's ``crop_top_left`` time ids expect."""
        left, top = crop
        if flip:
            item = self.items[ref]
            covered_width = cover_size(item.size[0], item.size[1], item.bucket)[0]
            left = flipped_crop_left(left, covered_width, item.bucket[0])
        return left, top

    def _load_one(
        self, ref: ItemRef, rng: random.Random
    ) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
        """(pixels or cached latents, the crop's (left, top) in the picture as trained (see
        :meth:`conditioning_crop`), the loss mask or None), flipped together."""
        item, subset = self.items[ref], self.subset_of(ref)
        flip = subset.flip_aug and rng.random() < 0.5
        if self.latents_cached:
            latents = item.latents_flipped if flip else item.latents
            if latents is None or ref not in self.latent_crops:
                raise RuntimeError(f"latents of '{item.path}' are missing (flip={flip})")
            crop = self.conditioning_crop(ref, self.latent_crops[ref], flip)
            return latents, crop, self.load_mask(ref, None, flip) if self._masked(ref) else None
        if item.mask_path is None and subset.alpha_mask:
            img, alpha = load_image_and_alpha(item.path)  # one decode for the pixels and their mask
        else:
            img, alpha = load_image(item.path), None
        tensor, crop = self._pixels(ref, img, rng, flip)
        mask = self.load_mask(ref, crop, flip, alpha) if self._masked(ref) else None
        return tensor, self.conditioning_crop(ref, crop, flip), mask

    def load_mask(self, ref: ItemRef, crop: tuple[int, int] | None, flip: bool,
                  alpha: Image.Image | None = None) -> torch.Tensor:
        """The loss mask (1, H, W) in [0, 1] at the bucket size: the mask picture's red channel or the alpha
        channel (``alpha``, when already decoded), resized and cropped like the pixels (``crop`` None: the
        centre crop cached latents were made from, memoised), flipped with them."""
        key = (ref, flip)
        if crop is None and key in self._masks:
            return self._masks[key]
        item = self.items[ref]
        if item.mask_path is not None:
            alpha = load_mask_picture(item.mask_path, item.size)
        elif alpha is None:
            alpha = load_image_and_alpha(item.path)[1]
        size = cover_size(alpha.size[0], alpha.size[1], item.bucket)
        if size != alpha.size:
            alpha = alpha.resize(size, Image.Resampling.BILINEAR)
        left, top = crop if crop is not None else crop_origin(size, item.bucket, None)
        alpha = alpha.crop((left, top, left + item.bucket[0], top + item.bucket[1]))
        if flip:
            alpha = hflip(alpha)
        mask = torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)[None]
        if crop is None:
            self._masks[key] = mask
        return mask

    def load_batch(self, batch: list[ItemRef], epoch: int, seed: int, step: int) -> dict[str, Any]:
        """Load one batch of the plan.

        Each position ``i`` uses RNGs derived from ``(seed, epoch, step, i)`` only, so a batch is
        reproducible on its own. ``epoch`` is 1-based (see :func:`process_caption`).

        Returns:
            ``pixels`` (B, 3, H, W) float32 in [-1, 1] — or ``latents`` (B, C, h, w) when cached —,
            ``captions`` list[str], ``loss_weights`` (B,) float32 (1.0 train, prior_loss_weight reg),
            ``is_reg`` list[bool], ``paths`` list[Path], ``loss_masks`` (B, 1, H, W) in [0, 1] when a
            subset has ``alpha_mask`` (else None), and SDXL's size conditioning (sd-scripts' names, all
            (h, w)-ordered like the time ids): ``original_sizes_hw`` list[(h, w)] the picture's size on
            disk (EXIF-rotated, before resizing), ``crop_top_lefts`` list[(top, left)] the crop's offset
            in the resized-to-cover picture (mirrored for flipped samples), ``target_sizes_hw``
            list[(h, w)] the bucket size.
        """
        tensors, captions, weights, crops, masks = [], [], [], [], []
        optimizer_step, total_steps = self.optimizer_step_of(epoch, step)
        for i, ref in enumerate(batch):
            item = self.items[ref]
            image_rng = derive_rng("image", seed, epoch, step, i)
            caption_rng = derive_rng("caption", seed, epoch, step, i)
            tensor, (left, top), mask = self._load_one(ref, image_rng)
            tensors.append(tensor)
            crops.append((top, left))
            masks.append(mask)
            captions.append(
                process_caption(item.caption, self.subset_of(ref).caption_options(), caption_rng, epoch,
                                optimizer_step, total_steps)
            )
            weights.append(self.prior_loss_weight if item.is_reg else 1.0)
        key = "latents" if self.latents_cached else "pixels"
        if any(m is not None for m in masks):  # pictures without alpha_mask count everywhere
            bucket = self.items[batch[0]].bucket
            ones = torch.ones(1, bucket[1], bucket[0])
            loss_masks = torch.stack([ones if m is None else m for m in masks])
        else:
            loss_masks = None
        return {
            key: torch.stack(tensors),
            "loss_masks": loss_masks,
            "captions": captions,
            "loss_weights": torch.tensor(weights, dtype=torch.float32),
            "is_reg": [self.items[r].is_reg for r in batch],
            "paths": [self.items[r].path for r in batch],
            "original_sizes_hw": [(self.items[r].size[1], self.items[r].size[0]) for r in batch],
            "crop_top_lefts": crops,
            "target_sizes_hw": [(self.items[r].bucket[1], self.items[r].bucket[0]) for r in batch],
        }

    def summary(self, num_processes: int = 1, grad_accum: int = 1) -> str:
        """A human-readable table of folders, captions, buckets and steps per epoch."""
        return format_summary(self, num_processes, grad_accum)

    def caption_source_counts(self, folder_refs: list[ItemRef]) -> Counter[str]:
        """Caption source ("txt", "class tokens", ...) -> image count for some items."""
        return Counter(self.items[r].caption_source for r in folder_refs)

    def image_paths(self) -> list[Path]:
        """All image paths (each once)."""
        return [it.path for it in self.items]
