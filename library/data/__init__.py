"""The dataset layer: folder parsing, captions, images, buckets, dataset specs, the dataset and latent cache.

The trainer uses :class:`library.data.dataset.TrainDataset` built from
:func:`library.data.dataset_config.specs_from_folders` or
:func:`library.data.dataset_config.specs_from_dataset_config`.
"""
