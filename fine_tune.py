"""sd-scripts' fine-tuning entry: the full fine-tune of ``train_db.py`` fed from a metadata JSON.

``--in_json meta.json --train_data_dir images/`` (or a ``--dataset_config`` with ``metadata_file`` subsets):
captions and tags come from the JSON (made by tools/merge_captions_to_metadata.py, merge_dd_tags_to_metadata.py,
clean_captions_and_tags.py), latents from tools/prepare_buckets_latents.py when present. As in sd-scripts the
text encoder is trained only with ``--train_text_encoder``. Options: --help; configs: --config_file.
"""

from library.cli import exit_now, run_trainer
from library.config.options_finetune import FINE_TUNE_DEFAULTS
from library.training.db_target import DreamBoothTarget

if __name__ == "__main__":
    exit_now(run_trainer("db", DreamBoothTarget, defaults=FINE_TUNE_DEFAULTS))
