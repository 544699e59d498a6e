"""The bad-input corpus (issue 12): a deterministic list of hostile or unlucky inputs to every entry point.

Each case names an entry point (a trainer script or ``tools/*.py``), its argv, the files to create in the
case's folder (configs, dataset folders, broken pictures, odd captions, fake models, damaged LoRAs, broken
resume folders, pickles that would run code) and what must happen: ``error`` (exit 2, the message holds
``words``), ``findings`` (exit 1: a checker reporting problems, ``words`` in its report) or ``ok`` (exit 0:
valid but odd input). ``tests/corpus/test_corpus.py`` runs every case in-process.

    python tests/corpus/make_corpus.py --list      # count per category and per expectation
    python tests/corpus/make_corpus.py --show ID   # one case

In argv, file contents and config values, ``{box}`` stands for the case's folder and ``{assets}`` for the
shared assets (tiny model, a good LoRA, a real resume state) built once per test session.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field

#: the file a planted pickle creates (inside the case's folder) if it is ever unpickled
MARKER = "PICKLE_RAN"
#: a (32, 32) linear layer of the tiny SD1 text encoder, and a UNet one
TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
UNET = "lora_unet_mid_block_attentions_0_proj_in"

NETWORK, DB = "train_network.py", "train_db.py"
TRAINERS = {NETWORK: ("network", None), DB: ("db", None), "sdxl_train_network.py": ("network", "sdxl"),
            "sdxl_train.py": ("db", "sdxl")}


@dataclass(frozen=True)
class Case:
    """One corpus entry. ``files``: (path relative to the box, recipe, *params) — see ``corpus_files.materialize``."""

    id: str
    category: str
    entry: str
    argv: tuple[str, ...]
    expect: str  # "error" | "findings" | "ok"
    words: tuple[str, ...] = ()
    files: tuple[tuple, ...] = ()
    #: no model load, no training: a validation-only case (``fast_tier`` picks the fast-tier ones among them)
    quick: bool = False
    #: paths (relative to the box) that must exist after an "ok" run
    creates: tuple[str, ...] = ()
    #: paths (relative to the box) that must not exist after the run
    absent: tuple[str, ...] = ()
    assets: tuple[str, ...] = field(default=())


BASE = {
    "pretrained_model_name_or_path": "builtin:tiny",
    "train_data_dir": "{box}/data",
    "output_dir": "{box}/out",
    "output_name": "lora",
    "resolution": 64,
    "train_batch_size": 1,
    "max_train_steps": 1,
    "learning_rate": 1e-3,
    "seed": 1,
    "network_dim": 4,
    "network_alpha": 2,
    "max_data_loader_n_workers": 0,
}
DB_BASE = {k: v for k, v in BASE.items() if not k.startswith("network_")}
#: a small good dataset: data/2_sks/ with two 64x64 pictures and their captions
DATASET = (("data/2_sks", "dataset", 2),)


def _toml_line(key: str, value) -> str:
    import json

    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, (int, float)):
        return f"{key} = {value!r}"
    return f"{key} = {json.dumps(value, ensure_ascii=False)}"


def config_text(values: dict, raw: str = "", drop: tuple[str, ...] = ()) -> str:
    """A flat TOML config from ``values`` (minus ``drop`` and the keys ``raw`` sets) followed by ``raw``."""
    raw_keys = {line.split("=")[0].strip() for line in raw.splitlines() if "=" in line}
    lines = [_toml_line(k, v) for k, v in values.items() if k not in drop and k not in raw_keys]
    return "\n".join(lines) + "\n" + raw + ("\n" if raw and not raw.endswith("\n") else "")


class Builder:
    """Collects cases; ids are unique."""

    def __init__(self) -> None:
        self.cases: list[Case] = []

    def add(self, case_id: str, category: str, entry: str, argv, expect: str, words=(), files=(), **kw) -> None:
        if any(c.id == case_id for c in self.cases):
            raise ValueError(f"duplicate case id {case_id}")
        self.cases.append(Case(case_id, category, entry, tuple(argv), expect, tuple(words), tuple(files), **kw))

    def trainer(self, case_id: str, category: str, expect: str, words=(), *, set_: dict | None = None,
                raw: str = "", drop=(), cli=(), entry: str = NETWORK, files=(), dataset: bool = True,
                quick: bool = False, output_config: bool = False, creates=(), **kw) -> None:
        """A trainer run on BASE (+ ``set_``, + ``raw`` TOML lines, − ``drop``) written to {box}/config.toml."""
        base = DB_BASE if TRAINERS[entry][0] == "db" else BASE
        values = {**base, **(set_ or {})}
        argv = ["--config_file", "{box}/config.toml", *cli]
        if output_config:
            argv += ["--output_config", "{box}/effective.toml"]
            creates = (*creates, "effective.toml")
        all_files = (("config.toml", "text", config_text(values, raw, tuple(drop))), *(DATASET if dataset else ()),
                     *files)
        self.add(case_id, category, entry, argv, expect, words, all_files, quick=quick, creates=tuple(creates),
                 **kw)


# --- configs ----------------------------------------------------------------------------------------------

NON_FINITE_OPTIONS = ("learning_rate", "unet_lr", "text_encoder_lr", "noise_offset", "max_grad_norm",
                      "network_alpha", "min_snr_gamma", "prior_loss_weight", "caption_dropout_rate", "huber_c",
                      "network_dropout", "scale_weight_norms", "ip_noise_gamma", "adaptive_noise_scale",
                      "lr_scheduler_power", "ema_decay", "v_pred_like_loss", "multires_noise_discount")


def config_cases(b: Builder) -> None:
    for i, name in enumerate(NON_FINITE_OPTIONS):
        b.trainer(f"config-nan-toml-{name}", "configs", "error", (name, "finite"), raw=f"{name} = nan",
                  quick=True)
        if i % 2 == 0:
            b.trainer(f"config-inf-cli-{name}", "configs", "error", (name,), cli=(f"--{name}", "inf"), quick=True)
        if i % 4 == 1:
            b.trainer(f"config-neginf-toml-{name}", "configs", "error", (name,), raw=f"{name} = -inf", quick=True)
    for name, value in [("seed", 2**70), ("seed", -1), ("seed", 2**32), ("validation_seed", 2**40),
                        ("train_batch_size", 0), ("train_batch_size", -1), ("max_train_steps", -1),
                        ("clip_skip", -1), ("clip_skip", 13), ("caption_dropout_rate", 1.5), ("network_dim", 0),
                        ("network_dim", 1_000_000_000), ("min_timestep", 1000), ("max_timestep", 1001),
                        ("gradient_accumulation_steps", -1), ("min_bucket_reso", -1), ("vae_batch_size", -1),
                        ("keep_tokens", -2), ("network_dropout", 2.0), ("learning_rate", -1e-4),
                        ("max_data_loader_n_workers", -1), ("save_every_n_steps", -1), ("huber_c", 5.0),
                        ("learning_rate", 10**400)]:
        b.trainer(f"config-range-{name}-{value if abs(value) < 1e12 else 'huge'}", "configs", "error", (name,),
                  raw=_toml_line(name, value) if value != 10**400 else f"{name} = {'9' * 401}", quick=True)
    for name, raw in [("resolution", "resolution = -5"), ("resolution", "resolution = 0"),
                      ("resolution", 'resolution = "abc"'), ("resolution", 'resolution = "64,64,64"'),
                      ("network_dim", 'network_dim = "abc"'), ("network_dim", "network_dim = {a = 1}"),
                      ("network_dim", "network_dim = 4.5"), ("learning_rate", "learning_rate = [1, 2]"),
                      ("learning_rate", 'learning_rate = "fast"'), ("train_batch_size", "train_batch_size = 1.5"),
                      ("flip_aug", 'flip_aug = "maybe"'), ("optimizer_type", 'optimizer_type = "NoSuchOpt"'),
                      ("lr_scheduler", 'lr_scheduler = "bogus"'), ("mixed_precision", 'mixed_precision = "fp64"'),
                      ("save_model_as", 'save_model_as = "exe"'), ("network_module", 'network_module = "os"'),
                      ("loss_type", 'loss_type = "l3"'), ("console_log_level", 'console_log_level = "LOUD"'),
                      ("seed", 'seed = "one"'), ("max_train_steps", "max_train_steps = true"),
                      ("lr_warmup_steps", 'lr_warmup_steps = "-5"'), ("text_encoder_lr", "text_encoder_lr = [1e-4, nan]"),
                      ("optimizer_args", "optimizer_args = 5"), ("network_args", 'network_args = ["conv_dim"]'),
                      ("network_args", 'network_args = ["conv_dim=abc"]')]:
        slug = "".join(ch if ch.isalnum() else "_" for ch in raw.split("=", 1)[1].strip())[:16]
        b.trainer(f"config-type-{name}-{slug}", "configs", "error", (name,), raw=raw, quick=True)
    for value in ["", "../../escape", "a/b", "a\\b", "..", ".", "bad\nname", "nul\u0000", "tab\tname"]:
        slug = value.encode("unicode_escape").decode().replace("/", "S").replace("\\", "B") or "empty"
        b.trainer(f"config-output_name-{slug}", "configs", "error", ("output_name",), set_={"output_name": value},
                  quick=True, absent=("escape.safetensors", "../../escape.safetensors"))
    for value in ["", "/txt", ".t/xt", "..", ".txt\n"]:
        slug = value.encode("unicode_escape").decode().replace("/", "S") or "empty"
        b.trainer(f"config-caption_extension-{slug}", "configs", "error", ("caption_extension",),
                  set_={"caption_extension": value}, quick=True)
    b.trainer("config-log_prefix-escape", "configs", "error", ("log_prefix",), set_={"log_prefix": "../x"},
              quick=True)
    # TOML files that are not TOML, not UTF-8, nested, tables as values, unknown keys
    for case_id, raw, words in [
        ("config-toml-syntax", "learning_rate = ", ("config.toml",)),
        ("config-toml-duplicate-key", "seed = 1", ("config.toml",)),  # BASE sets seed too: see below
        ("config-toml-unknown-key", "learning_rat = 1e-4", ("learning_rat",)),
        ("config-toml-deep", "network_args = " + "[" * 10_000 + "]" * 10_000, ("nested too deeply",)),
        ("config-toml-table-value", "[network_dim]\na = 1", ("network_dim", "table")),
        ("config-toml-section-table-value", "[network_arguments]\nnetwork_dim = {a = 1}", ("network_dim",)),
        ("config-toml-unterminated-string", 'output_name = "lora', ("config.toml",)),
        ("config-toml-bad-escape", 'output_name = "lo\\qra"', ("config.toml",)),
    ]:
        text = config_text(BASE, "") + raw + "\n"
        b.add(case_id, "configs", NETWORK, ["--config_file", "{box}/config.toml"], "error", words,
              [("config.toml", "text", text), *DATASET], quick=True)
    for case_id, data, words in [
        ("config-file-latin1", config_text({**BASE, "output_name": "café"}).encode("latin-1"), ("not UTF-8",)),
        ("config-file-utf16", config_text(BASE).encode("utf-16"), ("config.toml",)),
        ("config-file-random-bytes", None, ("config.toml",)),
        ("config-file-nul-bytes", b"\x00" * 64, ("config.toml",)),
    ]:
        recipe = ("config.toml", "random", 512, 7) if data is None else ("config.toml", "bytes", data)
        b.add(case_id, "configs", NETWORK, ["--config_file", "{box}/config.toml"], "error", words,
              [recipe, *DATASET], quick=True)
    b.add("config-file-missing", "configs", NETWORK, ["--config_file", "{box}/nope.toml"], "error", ("nope.toml",),
          DATASET, quick=True)
    b.add("config-file-is-a-folder", "configs", NETWORK, ["--config_file", "{box}/folder.toml"], "error",
          ("folder.toml",), [("folder.toml", "mkdir"), *DATASET], quick=True)
    # folders and log files that cannot be written
    blocker = (("a_file", "text", "x"),)
    for case_id, key, value, words in [
        ("config-output_dir-is-a-file", "output_dir", "{box}/a_file", ("output_dir", "is a file")),
        ("config-output_dir-below-a-file", "output_dir", "{box}/a_file/sub", ("output_dir", "cannot be written")),
        ("config-logging_dir-is-a-file", "logging_dir", "{box}/a_file", ("logging_dir", "is a file")),
        ("config-logging_dir-below-a-file", "logging_dir", "{box}/a_file/sub", ("logging_dir",)),
        ("config-console_log_file-is-a-folder", "console_log_file", "{box}/data", ("console_log_file",)),
        ("config-console_log_file-below-a-file", "console_log_file", "{box}/a_file/log.txt", ("console_log_file",)),
        ("config-vae-missing", "vae", "{box}/no_vae.safetensors", ("vae", "no_vae.safetensors")),
        ("config-sample_prompts-missing", "sample_prompts", "{box}/prompts.txt", ("sample_prompts",)),
        ("config-dataset_config-missing", "dataset_config", "{box}/ds.toml", ("dataset_config", "ds.toml")),
        ("config-resume-missing", "resume", "{box}/no-state", ("resume", "no-state")),
        ("config-network_weights-missing", "network_weights", "{box}/w.safetensors", ("network_weights",)),
    ]:
        b.trainer(case_id, "configs", "error", words, set_={key: value}, files=blocker, quick=True)
    b.add("config-output_config-is-a-folder", "configs", NETWORK,
          ["--config_file", "{box}/config.toml", "--output_config", "{box}/out.toml"], "error", ("out.toml",),
          [("config.toml", "text", config_text(BASE)), ("out.toml", "mkdir"), *DATASET], quick=True)
    b.add("config-output_config-below-a-file", "configs", NETWORK,
          ["--config_file", "{box}/config.toml", "--output_config", "{box}/a_file/out.toml"], "error",
          ("a_file",), [("config.toml", "text", config_text(BASE)), *blocker, *DATASET], quick=True)
    # the command line
    for case_id, cli, words in [
        ("cli-bad-float", ("--learning_rate", "abc"), ("learning_rate", "abc")),
        ("cli-bad-int", ("--network_dim", "four"), ("network_dim", "four")),
        ("cli-missing-value", ("--network_dim",), ("network_dim",)),
        ("cli-unknown-flag", ("--no_such_flag",), ("no_such_flag",)),
        ("cli-unknown-choice", ("--optimizer_type", "Nope"), ("optimizer_type", "Nope")),
        ("cli-seed-huge", ("--seed", str(2**70)), ("seed",)),
        ("cli-nan-lr", ("--learning_rate", "nan"), ("learning_rate", "finite")),
        ("cli-resolution-negative", ("--resolution", "-5"), ("resolution",)),
        ("cli-output_name-escape", ("--output_name", "../../escape"), ("output_name",)),
        ("cli-empty-model", ("--pretrained_model_name_or_path", ""), ("pretrained_model_name_or_path",)),
    ]:
        b.trainer(case_id, "configs", "error", words, cli=cli, quick=True)
    b.add("cli-no-model-at-all", "configs", NETWORK, ["--train_data_dir", "{box}/data", "--output_dir", "{box}/out"],
          "error", ("pretrained_model_name_or_path",), DATASET, quick=True)
    b.trainer("config-db-network-option", "configs", "error", ("network_dim",), entry=DB, raw="network_dim = 4",
              quick=True)
    b.trainer("config-db-nan-lr-te", "configs", "error", ("learning_rate_te",), entry=DB,
              raw="learning_rate_te = nan", quick=True)
    # valid but odd: accepted (written back by --output_config, nothing trained)
    for case_id, set_, raw in [
        ("ok-config-unicode-output-name", {"output_name": "café_ドラゴン v1.2"}, ""),
        ("ok-config-caption-extension-without-dot", {"caption_extension": "txt"}, ""),
        ("ok-config-largest-seed", {"seed": 2**32 - 1}, ""),
        ("ok-config-zero-learning-rate", {"learning_rate": 0.0}, ""),
        ("ok-config-widest-rank", {"network_dim": 4096}, ""),
        ("ok-config-empty-log-prefix", {"log_prefix": ""}, ""),
        ("ok-config-sections", {}, "[training]\nnoise_offset = 0.05\n[network_arguments]\nnetwork_alpha = 1.0"),
        ("ok-config-lr-unused-with-part-rates", {"unet_lr": 5e-4, "text_encoder_lr": 5e-5}, ""),
        ("ok-config-long-comment", {"training_comment": "x" * 100_000}, ""),
    ]:
        b.trainer(case_id, "configs", "ok", set_=set_, raw=raw, output_config=True, quick=True)
    b.add("ok-config-utf8-bom", "configs", NETWORK,
          ["--config_file", "{box}/config.toml", "--output_config", "{box}/effective.toml"], "ok", (),
          [("config.toml", "bytes", b"\xef\xbb\xbf" + config_text(BASE).encode()), *DATASET], quick=True,
          creates=("effective.toml",))
    b.add("ok-config-crlf", "configs", NETWORK,
          ["--config_file", "{box}/config.toml", "--output_config", "{box}/effective.toml"], "ok", (),
          [("config.toml", "bytes", config_text(BASE).replace("\n", "\r\n").encode()), *DATASET], quick=True,
          creates=("effective.toml",))
    b.trainer("ok-config-output-dir-created-deep", "configs", "ok", set_={"output_dir": "{box}/new/deeper/out"},
              output_config=True, quick=True, absent=("new",))


# --- datasets -----------------------------------------------------------------------------------------------

def dataset_cases(b: Builder) -> None:
    for case_id, set_, files, words in [
        ("dataset-train_data_dir-missing", {"train_data_dir": "{box}/nothing"}, (), ("train_data_dir", "nothing")),
        ("dataset-train_data_dir-is-a-file", {"train_data_dir": "{box}/a_file"}, (("a_file", "text", "x"),),
         ("train_data_dir", "a_file")),
        ("dataset-repeats-huge", {}, (("data/1000000000_x", "mkdir"),), ("1000000000_x", "repeats")),
        ("dataset-reg-repeats-huge", {"reg_data_dir": "{box}/reg"}, (("reg/99999_person", "mkdir"),),
         ("reg_data_dir", "99999_person")),
        ("dataset-reg-missing", {"reg_data_dir": "{box}/noreg"}, (), ("reg_data_dir", "noreg")),
    ]:
        b.trainer(case_id, "datasets", "error", words, set_=set_, files=files, quick=True)
    # dataset folders whose content is wrong: found when the dataset is built (the model may load first)
    for case_id, files, words in [
        ("dataset-empty-folder", (("data", "mkdir"),), ("data",)),
        ("dataset-subfolder-empty", (("data/2_sks", "mkdir"),), ("2_sks",)),
        ("dataset-only-captions", (("data/2_sks/a.txt", "text", "a caption"),), ("2_sks",)),
        ("dataset-zero-repeats", (("data/0_sks", "dataset", 2),), ("0_sks",)),
        ("dataset-no-repeat-prefix", (("data/sks", "dataset", 2),), ("sks",)),
        ("dataset-negative-repeats", (("data/-3_sks", "dataset", 2),), ("-3_sks",)),
    ]:
        b.trainer(case_id, "datasets", "error", words, drop=(), files=files, dataset=False)
    ds_set = {"train_data_dir": None}
    for case_id, text, words in [
        ("dataset-config-syntax", "[[datasets]\n", ("ds.toml",)),
        ("dataset-config-unknown-key", "[general]\nshuffle_captions = true\n[[datasets]]\n[[datasets.subsets]]\n"
         "image_dir = '{box}/data/2_sks'\n", ("shuffle_captions",)),
        ("dataset-config-no-subsets", "[[datasets]]\nresolution = 64\n", ("subsets",)),
        ("dataset-config-no-image-dir", "[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n", ("image_dir",)),
        ("dataset-config-image-dir-missing", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{box}/none'\n",
         ("none",)),
        ("dataset-config-zero-repeats", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{box}/data/2_sks'\n"
         "num_repeats = 0\n", ("num_repeats",)),
        ("dataset-config-huge-repeats", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{box}/data/2_sks'\n"
         "num_repeats = 1000000000\n", ("num_repeats",)),
        ("dataset-config-negative-resolution", "[[datasets]]\nresolution = -64\n[[datasets.subsets]]\n"
         "image_dir = '{box}/data/2_sks'\n", ("resolution",)),
        ("dataset-config-nan-dropout", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{box}/data/2_sks'\n"
         "caption_dropout_rate = nan\n", ("caption_dropout_rate",)),
        ("dataset-config-bad-caption-ext", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{box}/data/2_sks'\n"
         "caption_extension = '../x'\n", ("caption_extension",)),
        ("dataset-config-deep", "x = " + "[" * 5000 + "]" * 5000 + "\n", ("ds.toml",)),
        ("dataset-config-not-utf8", b"[[datasets]]\n# caf\xe9\n", ("ds.toml",)),
        ("dataset-config-string-as-table", "datasets = 'all'\n", ("datasets",)),
    ]:
        recipe = ("ds.toml", "bytes", text) if isinstance(text, bytes) else ("ds.toml", "text", text)
        b.trainer(case_id, "datasets", "error", words, set_={"dataset_config": "{box}/ds.toml"},
                  drop=tuple(ds_set), files=(recipe,))
    b.trainer("ok-dataset-config-bom", "datasets", "ok", set_={"dataset_config": "{box}/ds.toml"},
              drop=("train_data_dir",), output_config=True, quick=True,
              files=(("ds.toml", "bytes", b"\xef\xbb\xbf[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{box}/data/2_sks'\n"),))
    # check_dataset on odd folders
    # a layout the trainer would refuse is a finding of the checker (exit 1) that quotes the trainer's message
    for case_id, argv, files, expect, words in [
        ("dataset-check-missing", ["{box}/nothing"], (), "findings", ("nothing",)),
        ("dataset-check-random-file", ["{box}/junk.bin"], (("junk.bin", "random", 300, 3),), "findings",
         ("junk.bin",)),
        ("dataset-check-empty-folder", ["{box}/data"], (("data", "mkdir"),), "findings", ("data",)),
        ("dataset-check-bad-toml", ["{box}/ds.toml"], (("ds.toml", "text", "[[datasets]\n"),), "findings",
         ("ds.toml",)),
        ("dataset-check-huge-repeats", ["{box}/data"], (("data/1000000000_x", "dataset", 1),), "findings",
         ("1000000000_x",)),
        ("ok-dataset-check-good", ["{box}/data", "--resolution", "64"], DATASET, "ok", ()),
    ]:
        b.add(case_id, "datasets", "tools/check_dataset.py", argv, expect, words, files, quick=True)


# --- images -------------------------------------------------------------------------------------------------

BAD_IMAGES = {
    "zero-byte": ("bytes", b""),
    "truncated": ("truncated_png",),
    "header-bomb": ("header_bomb",),
    "text-named-png": ("text", "this is not a picture"),
    "random-jpg": ("random", 2000, 11),
    "html-webp": ("text", "<html><body>404</body></html>"),
}
BAD_IMAGE_NAMES = {"zero-byte": "bad.png", "truncated": "bad.png", "header-bomb": "bad.png",
                   "text-named-png": "bad.png", "random-jpg": "bad.jpg", "html-webp": "bad.webp"}


def image_cases(b: Builder) -> None:
    for kind, recipe in BAD_IMAGES.items():
        name = BAD_IMAGE_NAMES[kind]
        only = (("data/2_sks/" + name, *recipe),)
        beside = (*DATASET, ("data/2_sks/" + name, *recipe))
        if kind in ("zero-byte", "header-bomb", "text-named-png"):
            b.trainer(f"image-{kind}-only-train", "images", "error", ("unreadable",), files=only, dataset=False)
        b.add(f"image-{kind}-only-check", "images", "tools/check_dataset.py", ["{box}/data", "--resolution", "64"],
              "findings", ("unreadable", name), only, quick=True)
        b.add(f"image-{kind}-beside-check", "images", "tools/check_dataset.py",
              ["{box}/data", "--resolution", "64"], "findings", ("unreadable", name), beside, quick=True)
        b.add(f"image-{kind}-only-prepare", "images", "tools/prepare_dataset.py",
              ["{box}/raw", "{box}/prepared", "--class_name", "dog"], "error", ("None of the",),
              (("raw/" + name, *recipe),), quick=True, absent=("prepared/train",))
        b.add(f"ok-image-{kind}-beside-prepare", "images", "tools/prepare_dataset.py",
              ["{box}/raw", "{box}/prepared", "--class_name", "dog"], "ok", ("skipped 1 unreadable",),
              (("raw", "dataset", 2), ("raw/" + name, *recipe)), quick=True, creates=("prepared/train/10_dog",))
    # one bad picture beside good ones: skipped with a warning, the run trains
    for kind in ("truncated", "header-bomb"):
        name = BAD_IMAGE_NAMES[kind]
        b.trainer(f"ok-image-{kind}-beside-train", "images", "ok", (name,),
                  files=(("data/2_sks/" + name, *BAD_IMAGES[kind]),), creates=("out/lora.safetensors",))
    b.trainer("ok-image-png-named-jpg-train", "images", "ok", dataset=False,
              files=(("data/2_sks", "dataset", 1), ("data/2_sks/real.jpg", "png", 64, 64)),
              creates=("out/lora.safetensors",))
    b.trainer("ok-image-tiny-and-wide-train", "images", "ok", dataset=False,
              set_={"enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 64},
              files=(("data/2_sks/tiny.png", "png", 3, 3), ("data/2_sks/wide.png", "png", 400, 20)),
              creates=("out/lora.safetensors",))


# --- captions -----------------------------------------------------------------------------------------------

CAPTIONS = {
    "latin1": ("bytes", "café, crème".encode("latin-1")),
    "utf16-bom": ("bytes", "sks, dog".encode("utf-16")),
    "utf8-bom": ("bytes", b"\xef\xbb\xbfsks, dog"),
    "binary": ("random", 300, 5),
    "empty": ("bytes", b""),
    "nul-inside": ("bytes", b"sks\x00dog"),
    "huge": ("text", "tag, " * 200_000),
    "crlf-lines": ("bytes", b"sks, dog\r\nsecond line\r\n"),
    "only-separators": ("text", ",,,, , ,"),
    "control-chars": ("text", "sks\x1b[31m red\x07, dog\u2028x"),
}


NOT_UTF8 = ("latin1", "utf16-bom", "binary")


def caption_cases(b: Builder) -> None:
    for i, (kind, recipe) in enumerate(CAPTIONS.items()):
        files = (*DATASET, ("data/2_sks/0.txt", *recipe))
        if kind in NOT_UTF8:  # named as a finding by the checker, an error by the editor
            b.add(f"caption-{kind}-check", "captions", "tools/check_dataset.py", ["{box}/data", "--resolution", "64"],
                  "findings", ("0.txt", "UTF-8"), files)
            b.add(f"caption-{kind}-stats", "captions", "tools/edit_captions.py", ["{box}/data", "stats"], "error",
                  ("0.txt", "not valid UTF-8"), files)
            b.add(f"caption-{kind}-replace", "captions", "tools/edit_captions.py",
                  ["{box}/data", "replace", "sks", "ohwx", "--recursive"], "error", ("0.txt", "UTF-8"), files)
            continue
        b.add(f"ok-caption-{kind}-check", "captions", "tools/check_dataset.py", ["{box}/data", "--resolution", "64"],
              "ok", (), files)
        b.add(f"ok-caption-{kind}-stats", "captions", "tools/edit_captions.py", ["{box}/data", "stats"], "ok", (),
              files)
        if i % 2 == 0:
            b.add(f"ok-caption-{kind}-replace", "captions", "tools/edit_captions.py",
                  ["{box}/data", "replace", "sks", "ohwx", "--recursive", "--no-backup"], "ok", ("changed",),
                  files)
    b.add("ok-caption-is-a-folder-check", "captions", "tools/check_dataset.py", ["{box}/data", "--resolution", "64"],
          "ok", (), (("data/2_sks/0.png", "png", 64, 64), ("data/2_sks/0.txt", "mkdir")))
    b.add("caption-edit-bad-extension", "captions", "tools/edit_captions.py",
          ["{box}/data", "stats", "--caption_extension", "../x"], "error", ("caption_extension",), DATASET, quick=True)
    for kind in ("latin1", "binary"):
        b.trainer(f"caption-{kind}-train", "captions", "error", ("0.txt", "UTF-8"),
                  files=(("data/2_sks/0.txt", *CAPTIONS[kind]),))
    b.trainer("ok-caption-huge-train", "captions", "ok", files=(("data/2_sks/0.txt", *CAPTIONS["huge"]),),
              creates=("out/lora.safetensors",))


# --- base models --------------------------------------------------------------------------------------------

BAD_MODELS = {
    "random-safetensors": ("model.safetensors", "random", 4096, 1),
    "text-bin": ("model.bin", "text", "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"),
    "text-ckpt": ("model.ckpt", "text", "<html>Not Found</html>"),
    "zero-safetensors": ("model.safetensors", "bytes", b""),
    "missing-keys": ("model.safetensors", "model_missing_keys"),
    "lora-as-model": ("model.safetensors", "lora", "good"),
    "empty-folder": ("model", "mkdir"),
    "folder-without-unet": ("model", "diffusers_without_unet"),
    "pickle-payload-ckpt": ("model.ckpt", "payload", "torch_zip"),
    "plain-pickle-ckpt": ("model.ckpt", "payload", "plain"),
}
#: the words of each bad model's error (besides its path)
MODEL_WORDS = {"missing-keys": (), "pickle-payload-ckpt": ("allow_unsafe_pickle",),
               "plain-pickle-ckpt": ("allow_unsafe_pickle",)}


def _model_entry_points(path: str) -> list[tuple[str, str, list[str], bool]]:
    """(slug, entry, argv, quick) for each entry point that takes a base model."""
    return [
        ("train", NETWORK, None, False),
        ("db", DB, None, False),
        ("convert", "tools/convert_model.py", [path, "{box}/converted.safetensors"], True),
        ("merge-models", "tools/merge_models.py",
         ["--models", "{assets}/tiny_sd1.safetensors", path, "--save_to", "{box}/merged.safetensors"], False),
        ("extract", "tools/extract_lora_from_models.py",
         ["--model_org", path, "--model_tuned", "{assets}/tiny_sd1.safetensors", "--save_to", "{box}/x.safetensors"],
         False),
        ("merge-lora-into", "tools/merge_lora.py",
         ["--sd_model", path, "--models", "{assets}/good_lora.safetensors", "--save_to", "{box}/m.safetensors"], False),
        ("inspect-check", "tools/inspect_lora.py", ["{assets}/good_lora.safetensors", "--check", path], False),
    ]


def model_cases(b: Builder) -> None:
    for kind, (name, *recipe) in BAD_MODELS.items():
        path = "{box}/" + name
        files = ((name, *recipe),)
        words = (name, *MODEL_WORDS.get(kind, ()))
        for slug, entry, argv, quick in _model_entry_points(path):
            if slug == "db" and kind not in ("random-safetensors", "text-bin", "pickle-payload-ckpt"):
                continue
            case_id = f"model-{kind}-{slug}"
            if argv is None:
                b.trainer(case_id, "models", "error", words, entry=entry,
                          set_={"pretrained_model_name_or_path": path}, files=files)
            else:
                b.add(case_id, "models", entry, argv, "error", words, files, quick=quick)
    for kind in ("random-safetensors", "text-bin", "pickle-payload-ckpt"):
        name, *recipe = BAD_MODELS[kind]
        b.trainer(f"model-vae-{kind}", "models", "error", (name,), set_={"vae": "{box}/" + name},
                  files=((name, *recipe),))
    b.trainer("model-sdxl-script-with-sd1", "models", "error", ("builtin:tiny", "sdxl"), entry="sdxl_train_network.py")
    b.trainer("model-nonexistent-path", "models", "error", ("pretrained_model_name_or_path",),
              set_={"pretrained_model_name_or_path": "{box}/no/such/model.safetensors"}, quick=True)
    b.trainer("model-unknown-builtin", "models", "error", ("builtin:nothing",),
              set_={"pretrained_model_name_or_path": "builtin:nothing"})
    b.add("model-convert-into-nonempty-folder", "models", "tools/convert_model.py",
          ["{assets}/tiny_sd1.safetensors", "{box}/keep"], "error", ("--overwrite",),
          (("keep/precious.txt", "text", "my work"),), creates=("keep/precious.txt",))
    b.add("model-convert-bad-format", "models", "tools/convert_model.py",
          ["{assets}/tiny_sd1.safetensors", "{box}/o.safetensors", "--to", "exe"], "error", ("--to",), quick=True)
    b.add("model-convert-missing-src", "models", "tools/convert_model.py",
          ["{box}/none.safetensors", "{box}/o.safetensors"], "error", ("none.safetensors",), quick=True)
    b.add("model-convert-dst-below-file", "models", "tools/convert_model.py",
          ["{assets}/tiny_sd1.safetensors", "{box}/a_file/o.safetensors"], "error", ("a_file",),
          (("a_file", "text", "x"),))
    b.add("model-merge-models-nan-model", "models", "tools/merge_models.py",
          ["--models", "{assets}/tiny_sd1.safetensors", "{box}/nan_model.safetensors", "--save_to",
           "{box}/m.safetensors"], "error", ("nan_model.safetensors",), (("nan_model.safetensors", "model_nan"),))
    b.add("model-merge-lora-nan-lora-into", "models", "tools/merge_lora.py",
          ["--sd_model", "{assets}/tiny_sd1.safetensors", "--models", "{box}/nan.safetensors", "--save_to",
           "{box}/m.safetensors"], "error", ("nan.safetensors",), (("nan.safetensors", "lora", "nan"),))
    b.add("ok-model-convert-roundtrip", "models", "tools/convert_model.py",
          ["{assets}/tiny_sd1.safetensors", "{box}/converted"], "ok", (), creates=("converted/model_index.json",))


# --- LoRA files ---------------------------------------------------------------------------------------------

LORA_KINDS = {
    "nan": ("lora", "nan"), "inf": ("lora", "inf"), "nan-alpha": ("lora", "nan_alpha"),
    "rank-mismatch": ("lora", "rank_mismatch"), "vector-alpha": ("lora", "vector_alpha"), "int": ("lora", "int"),
    "one-dim": ("lora", "one_dim"), "no-lora-keys": ("lora", "no_lora_keys"), "random-bytes": ("random", 3000, 2),
    "text": ("text", "hello world"), "empty": ("bytes", b""), "truncated": ("lora", "truncated"),
}
PICKLE_LORAS = {"pickle-payload-pt": ("lora.pt", "payload", "torch_zip"),
                "plain-pickle-ckpt": ("lora.ckpt", "payload", "plain")}
LORA_WORDS = {"nan": ("NaN",), "inf": ("NaN/inf",), "nan-alpha": ("alpha",), "rank-mismatch": ("rank mismatch",),
              "vector-alpha": ("alpha has 2 values",), "int": ("int64",), "one-dim": ("shape (4,)",)}


#: the damaged LoRAs also tried as the trainer's network_weights (each loads the model)
TRAIN_LORA_KINDS = ("nan", "rank-mismatch", "int", "no-lora-keys", "random-bytes", "empty", "pickle-payload-pt")


def _lora_entry_points(path: str) -> list[tuple[str, str, list[str] | None]]:
    return [
        ("inspect", "tools/inspect_lora.py", [path, "--no_metadata"]),
        ("resize", "tools/resize_lora.py", ["--model", path, "--new_rank", "2", "--save_to", "{box}/r.safetensors"]),
        ("merge", "tools/merge_lora.py", ["--models", path, "--save_to", "{box}/m.safetensors"]),
        ("merge-into", "tools/merge_lora.py",
         ["--sd_model", "{assets}/tiny_sd1.safetensors", "--models", path, "--save_to", "{box}/m.safetensors"]),
        ("train-weights", NETWORK, None),
    ]


def lora_cases(b: Builder) -> None:
    files_by_kind = {k: ("lora.safetensors", *r) for k, r in LORA_KINDS.items()}
    files_by_kind.update(PICKLE_LORAS)
    for kind, (name, *recipe) in files_by_kind.items():
        path = "{box}/" + name
        words = (name, *LORA_WORDS.get(kind, ()))
        if kind in PICKLE_LORAS:
            words = (name, "allow_unsafe_pickle")
        for slug, entry, argv in _lora_entry_points(path):
            case_id = f"lora-{kind}-{slug}"
            if argv is None:
                if kind in TRAIN_LORA_KINDS:
                    b.trainer(case_id, "loras", "error", (name,), set_={"network_weights": path},
                              files=((name, *recipe),))
            else:
                b.add(case_id, "loras", entry, argv, "error", words, ((name, *recipe),),
                      quick=slug in ("inspect", "resize", "merge"), absent=("r.safetensors", "m.safetensors"))
    good = "{assets}/good_lora.safetensors"
    for case_id, entry, argv, words, files in [
        ("lora-resize-dynamic-param-negative", "tools/resize_lora.py",
         ["--model", good, "--save_to", "{box}/r.safetensors", "--dynamic_method", "sv_fro", "--dynamic_param", "-1"],
         ("in (0, 1]",), ()),
        ("lora-resize-dynamic-param-nan", "tools/resize_lora.py",
         ["--model", good, "--save_to", "{box}/r.safetensors", "--dynamic_method", "sv_fro", "--dynamic_param", "nan"],
         ("in (0, 1]",), ()),
        ("lora-resize-zero-rank", "tools/resize_lora.py",
         ["--model", good, "--save_to", "{box}/r.safetensors", "--new_rank", "0"], ("--new_rank",), ()),
        ("lora-resize-bad-method", "tools/resize_lora.py",
         ["--model", good, "--save_to", "{box}/r.safetensors", "--dynamic_method", "magic"], ("dynamic_method",), ()),
        ("lora-resize-save-to-folder", "tools/resize_lora.py",
         ["--model", good, "--save_to", "{box}/out.safetensors", "--new_rank", "2"], ("is an existing folder",),
         (("out.safetensors", "mkdir"),)),
        ("lora-resize-save-below-file", "tools/resize_lora.py",
         ["--model", good, "--save_to", "{box}/a_file/r.safetensors", "--new_rank", "2"], ("a_file",),
         (("a_file", "text", "x"),)),
        ("lora-resize-missing-model", "tools/resize_lora.py",
         ["--model", "{box}/none.safetensors", "--save_to", "{box}/r.safetensors", "--new_rank", "2"],
         ("none.safetensors",), ()),
        ("lora-merge-ratio-nan", "tools/merge_lora.py",
         ["--models", good, "--ratios", "nan", "--save_to", "{box}/m.safetensors"], ("--ratios",), ()),
        ("lora-merge-ratio-inf-into", "tools/merge_lora.py",
         ["--sd_model", "{assets}/tiny_sd1.safetensors", "--models", good, "--ratios", "inf", "--save_to",
          "{box}/m.safetensors"], ("finite",), ()),
        ("lora-merge-ratio-count", "tools/merge_lora.py",
         ["--models", good, "--ratios", "1", "0.5", "--save_to", "{box}/m.safetensors"], ("--ratios",), ()),
        ("lora-merge-ratio-overflow-fp16", "tools/merge_lora.py",
         ["--models", good, "--ratios", "1e38", "--save_precision", "fp16", "--save_to", "{box}/m.safetensors"],
         ("Nothing was saved",), ()),
        ("lora-merge-block-weights-nan", "tools/merge_lora.py",
         ["--models", good, "--block_weights", ",".join(["1"] * 24 + ["nan"]), "--save_to", "{box}/m.safetensors"],
         ("finite",), ()),
        ("lora-merge-block-weights-count", "tools/merge_lora.py",
         ["--models", good, "--block_weights", "1,2,3", "--save_to", "{box}/m.safetensors"], ("block weights",), ()),
        ("lora-merge-svd-without-rank", "tools/merge_lora.py",
         ["--models", good, "--svd", "--save_to", "{box}/m.safetensors"], ("--new_rank",), ()),
        ("lora-merge-save-to-folder", "tools/merge_lora.py",
         ["--models", good, "--save_to", "{box}/out.safetensors"], ("is an existing folder",),
         (("out.safetensors", "mkdir"),)),
        ("lora-inspect-missing", "tools/inspect_lora.py", ["{box}/none.safetensors"], ("none.safetensors",), ()),
        ("lora-inspect-folder", "tools/inspect_lora.py", ["{box}/folder"], ("folder",), (("folder", "mkdir"),)),
        ("lora-train-weights-rank-mismatch", NETWORK, None, ("good_lora.safetensors", "do not fit"), ()),
    ]:
        if argv is None:
            b.trainer(case_id, "loras", "error", words, set_={"network_weights": good, "network_dim": 8},
                      files=files, assets=("good_lora",))
            continue
        b.add(case_id, "loras", entry, argv, "error", words, files, quick=True,
              absent=("r.safetensors", "m.safetensors"))
    b.add("ok-lora-inspect-good", "loras", "tools/inspect_lora.py", [good], "ok", ("rank",), quick=True)
    b.add("ok-lora-resize-good", "loras", "tools/resize_lora.py",
          ["--model", good, "--new_rank", "2", "--save_to", "{box}/r.safetensors"], "ok", (), quick=True,
          creates=("r.safetensors",))
    b.add("ok-lora-resize-rank-above", "loras", "tools/resize_lora.py",
          ["--model", good, "--new_rank", "64", "--save_to", "{box}/r.safetensors"], "ok", (), quick=True,
          creates=("r.safetensors",))
    b.add("ok-lora-merge-negative-ratio", "loras", "tools/merge_lora.py",
          ["--models", good, good, "--ratios", "1", "-1", "--save_to", "{box}/m.safetensors"], "ok", (), quick=True,
          creates=("m.safetensors",))
    b.trainer("ok-lora-train-from-weights", "loras", "ok", set_={"network_weights": good},
              creates=("out/lora.safetensors",))


# --- resume folders -----------------------------------------------------------------------------------------

#: (mutation, the file the error names, still resumes with --resume_inexact)
STATE_BREAKS = {
    "broken-json": ("train_state.json", True),
    "json-array": ("train_state.json", False),
    "missing-step": ("train_state.json", True),
    "step-text": ("train_state.json", False),
    "no-optimizer": ("optimizer.safetensors", True),
    "truncated-optimizer": ("optimizer.safetensors", True),
    "truncated-rng": ("random_states_0.safetensors", True),
    "no-scheduler": ("custom_checkpoint_0.safetensors", True),
    "truncated-model": ("model.safetensors", False),
    "no-model": ("model.safetensors", False),
    "random-model": ("model.safetensors", False),
    "json-is-a-folder": ("train_state.json", False),
}
PLANTED = {  # legacy files replaced by a pickle that would run code
    "planted-rng-pkl": ("random_states_0.pkl", "torch_zip"),
    "planted-custom-pkl": ("custom_checkpoint_0.pkl", "plain"),
    "planted-optimizer-bin": ("optimizer.bin", "torch_zip"),
}


def resume_cases(b: Builder) -> None:
    resume = {"resume": "{box}/state", "max_train_steps": 2}
    for kind, (name, skippable) in STATE_BREAKS.items():
        files = (("state", "state", kind),)
        b.trainer(f"resume-{kind}", "resume", "error", (name,), set_=resume, files=files, assets=("state",))
        if skippable and kind in ("broken-json", "no-optimizer", "truncated-rng"):
            b.trainer(f"ok-resume-{kind}-inexact", "resume", "ok", ("bit-exact",), set_=resume, files=files,
                      cli=("--resume_inexact",), assets=("state",), creates=("out/lora.safetensors",))
    for kind, (name, _) in PLANTED.items():
        files = (("state", "state", kind),)
        ours = {"random_states_0.pkl": "random_states_0.safetensors", "optimizer.bin": "optimizer.safetensors",
                "custom_checkpoint_0.pkl": "custom_checkpoint_0.safetensors"}[name]
        b.trainer(f"resume-{kind}", "resume", "error", (ours, "resume_inexact"), set_=resume, files=files,
                  assets=("state",))
        if kind == "planted-rng-pkl":
            b.trainer(f"ok-resume-{kind}-inexact", "resume", "ok", ("bit-exact",), set_=resume, files=files,
                      cli=("--resume_inexact",), assets=("state",), creates=("out/lora.safetensors",))
    b.trainer("ok-resume-pickles-beside-ours", "resume", "ok", set_=resume, files=(("state", "state", "beside"),),
              cli=("--allow_unsafe_pickle",), assets=("state",), creates=("out/lora.safetensors",))
    b.trainer("resume-empty-folder", "resume", "error", ("state",), set_=resume, files=(("state", "mkdir"),))
    b.trainer("resume-is-a-file", "resume", "error", ("resume",), set_=resume, files=(("state", "text", "x"),),
              quick=True)
    b.trainer("resume-db-from-lora-state", "resume", "error", ("state",), entry=DB,
              set_={"resume": "{box}/state", "max_train_steps": 2}, files=(("state", "state", "intact"),),
              assets=("state",))


# --- every tool's arguments ---------------------------------------------------------------------------------

def tool_cases(b: Builder) -> None:
    check = "tools/check_dataset.py"
    for case_id, argv, words in [
        ("tool-check-resolution-negative", ["{box}/data", "--resolution", "-5"], ("--resolution",)),
        ("tool-check-resolution-zero", ["{box}/data", "--resolution", "0"], ("--resolution",)),
        ("tool-check-batch-size-zero", ["{box}/data", "--batch_size", "0"], ("--batch_size",)),
        ("tool-check-workers-negative", ["{box}/data", "--max_data_loader_n_workers", "-1"],
         ("max_data_loader_n_workers",)),
        ("tool-check-min-share-nan", ["{box}/data", "--min_share", "nan"], ("--min_share",)),
        ("tool-check-pair-share-two", ["{box}/data", "--pair_share", "2"], ("--pair_share",)),
        ("tool-check-phash-negative", ["{box}/data", "--max_phash_distance", "-1"], ("--max_phash_distance",)),
        ("tool-check-bucket-reso-tiny", ["{box}/data", "--max_bucket_reso", "1"], ("--max_bucket_reso",)),
        ("tool-check-resolution-text", ["{box}/data", "--resolution", "big"], ("--resolution",)),
        ("tool-check-family-bogus", ["{box}/data", "--family", "sd9"], ("--family",)),
    ]:
        b.add(case_id, "tools", check, argv, "error", words, DATASET, quick=True)
    b.add("tool-check-reg-missing", "tools", check, ["{box}/data", "--reg_data_dir", "{box}/noreg"], "findings",
          ("noreg",), DATASET)
    prep = "tools/prepare_dataset.py"
    raw = (("raw", "dataset", 2),)
    for case_id, extra, words, files in [
        ("tool-prepare-class-escape", ["--class_name", "../../x"], ("--class_name",), raw),
        ("tool-prepare-class-empty", ["--class_name", ""], ("--class_name",), raw),
        ("tool-prepare-class-slash", ["--class_name", "a/b"], ("--class_name",), raw),
        ("tool-prepare-class-newline", ["--class_name", "dog\ncat"], ("--class_name",), raw),
        ("tool-prepare-trigger-escape", ["--class_name", "dog", "--trigger", "../x"], ("--trigger",), raw),
        ("tool-prepare-repeats-zero", ["--class_name", "dog", "--repeats", "0"], ("--repeats",), raw),
        ("tool-prepare-repeats-negative", ["--class_name", "dog", "--repeats", "-1"], ("--repeats",), raw),
        ("tool-prepare-repeats-huge", ["--class_name", "dog", "--repeats", "1000000000"], ("--repeats",), raw),
        ("tool-prepare-reg-repeats-zero", ["--class_name", "dog", "--reg_dir", "{box}/raw", "--reg_repeats", "0"],
         ("--reg_repeats",), raw),
        ("tool-prepare-resolution-negative", ["--class_name", "dog", "--resolution", "-5"], ("--resolution",), raw),
        ("tool-prepare-group-size-zero", ["--class_name", "dog", "--group_size", "0"], ("--group_size",), raw),
        ("tool-prepare-caption-ext-empty", ["--class_name", "dog", "--caption_extension", ""],
         ("--caption_extension",), raw),
        ("tool-prepare-caption-ext-escape", ["--class_name", "dog", "--caption_extension", "/../x"],
         ("--caption_extension",), raw),
        ("tool-prepare-images-missing", ["--class_name", "dog"], ("raw",), ()),
        ("tool-prepare-reg-missing", ["--class_name", "dog", "--reg_dir", "{box}/noreg"], ("noreg",), raw),
        ("tool-prepare-link-bogus", ["--class_name", "dog", "--link", "teleport"], ("--link",), raw),
        ("tool-prepare-no-class", [], ("--class_name",), raw),
    ]:
        b.add(case_id, "tools", prep, ["{box}/raw", "{box}/prepared", *extra], "error", words, files, quick=True,
              absent=("prepared/train", "x", "../x", "../../x"))
    b.add("tool-prepare-out-is-a-file", "tools", prep, ["{box}/raw", "{box}/a_file", "--class_name", "dog"],
          "error", ("a_file",), (*raw, ("a_file", "text", "x")), quick=True)
    b.add("tool-prepare-out-not-empty", "tools", prep, ["{box}/raw", "{box}/prepared", "--class_name", "dog"],
          "error", ("--overwrite",), (*raw, ("prepared/train/10_dog/keep.png", "png", 8, 8)), quick=True)
    b.add("ok-tool-prepare-unicode-class", "tools", prep, ["{box}/raw", "{box}/prepared", "--class_name", "chien café",
          "--trigger", "ドラゴン"], "ok", (), raw, quick=True, creates=("prepared/train/10_ドラゴン chien café",))
    edit = "tools/edit_captions.py"
    for case_id, argv, words, files in [
        ("tool-edit-missing-folder", ["{box}/none", "stats"], ("none",), ()),
        ("tool-edit-folder-is-file", ["{box}/a_file", "stats"], ("a_file",), (("a_file", "text", "x"),)),
        ("tool-edit-no-command", ["{box}/data"], ("command",), DATASET),
        ("tool-edit-bad-command", ["{box}/data", "explode"], ("explode",), DATASET),
        ("tool-edit-stats-share-nan", ["{box}/data", "stats", "--min_share", "nan"], ("--min_share",), DATASET),
        ("tool-edit-stats-top-negative", ["{box}/data", "stats", "--top", "-1"], ("--top",), DATASET),
        ("tool-edit-replace-missing-args", ["{box}/data", "replace"], ("replace",), DATASET),
        ("tool-edit-caption-ext-slash", ["{box}/data", "add", "x", "--caption_extension", "a/b"],
         ("caption_extension",), DATASET),
    ]:
        b.add(case_id, "tools", edit, argv, "error", words, files, quick=True)
    tiny = "tools/make_tiny_model.py"
    for case_id, argv, words, files in [
        ("tool-tiny-out-is-file", ["--out", "{box}/a_file"], ("--out", "existing file"), (("a_file", "text", "keep"),)),
        ("tool-tiny-single-is-folder", ["--single_file", "{box}/folder"], ("existing folder",), (("folder", "mkdir"),)),
        ("tool-tiny-below-file", ["--single_file", "{box}/a_file/x.safetensors"], ("a_file",),
         (("a_file", "text", "keep"),)),
        ("tool-tiny-no-target", [], ("--out",), ()),
        ("tool-tiny-bad-family", ["--out", "{box}/t", "--family", "sd9"], ("--family",), ()),
        ("tool-tiny-bad-seed", ["--out", "{box}/t", "--seed", "x"], ("--seed",), ()),
    ]:
        b.add(case_id, "tools", tiny, argv, "error", words, files, quick=True, creates=tuple(
            p for p, *_ in files if p == "a_file"))
    b.add("tool-tiny-seed-huge", "tools", tiny, ["--single_file", "{box}/t.safetensors", "--seed", str(2**70)],
          "error", ("--seed",), quick=True)
    tagger = "tools/tag_images_by_wd14_tagger.py"
    for case_id, argv, words, files in [
        ("tool-tagger-missing-folder", ["{box}/none"], ("none", "does not exist"), ()),
        ("tool-tagger-folder-is-file", ["{box}/a_file"], ("a_file", "is a file"), (("a_file", "text", "x"),)),
        ("tool-tagger-batch-zero", ["{box}/data", "--batch_size", "0"], ("--batch_size",), DATASET),
        ("tool-tagger-thresh-nan", ["{box}/data", "--thresh", "nan"], ("--thresh",), DATASET),
        ("tool-tagger-bad-replacement", ["{box}/data", "--tag_replacement", "a"], ("--tag_replacement",), DATASET),
        ("tool-tagger-workers-negative", ["{box}/data", "--max_data_loader_n_workers", "-2"],
         ("max_data_loader_n_workers",), DATASET),
        ("tool-tagger-caption-ext-escape", ["{box}/data", "--caption_extension", "../x"], ("caption_extension",),
         DATASET),
        ("tool-tagger-output-path-folder", ["{box}/data", "--output_path", "{box}/data"], ("--output_path",), DATASET),
    ]:
        b.add(case_id, "tools", tagger, argv, "error", words, files, quick=True)
    for script in ("make_captions", "make_captions_by_git"):
        entry = f"tools/{script}.py"
        short = "blip" if script == "make_captions" else "git"
        for case_id, argv, words, files in [
            (f"tool-{short}-missing-folder", ["{box}/none"], ("none",), ()),
            (f"tool-{short}-folder-is-file", ["{box}/a_file"], ("a_file",), (("a_file", "text", "x"),)),
            (f"tool-{short}-batch-zero", ["{box}/data", "--batch_size", "0"], ("--batch_size",), DATASET),
            (f"tool-{short}-beams-zero", ["{box}/data", "--num_beams", "0", "--beam_search"], ("--num_beams",),
             DATASET),
            (f"tool-{short}-top-p-nan", ["{box}/data", "--top_p", "nan"], ("--top_p",), DATASET),
            (f"tool-{short}-lengths-crossed", ["{box}/data", "--min_length", "50", "--max_length", "5"],
             ("--min_length",), DATASET),
            (f"tool-{short}-caption-ext-escape", ["{box}/data", "--caption_extension", "../x"],
             ("caption_extension",), DATASET),
        ]:
            b.add(case_id, "tools", entry, argv, "error", words, files, quick=True)
    extract = "tools/extract_lora_from_models.py"
    tiny_model = "{assets}/tiny_sd1.safetensors"
    for case_id, extra, words, files in [
        ("tool-extract-dim-zero", ["--dim", "0"], ("dim", "positive"), ()),
        ("tool-extract-dim-negative", ["--dim", "-4"], ("dim", "positive"), ()),
        ("tool-extract-conv-dim-negative", ["--conv_dim", "-1"], ("conv_dim", "positive"), ()),
        ("tool-extract-clamp-two", ["--clamp_quantile", "2"], ("--clamp_quantile",), ()),
        ("tool-extract-clamp-nan", ["--clamp_quantile", "nan"], ("--clamp_quantile",), ()),
        ("tool-extract-min-diff-nan", ["--min_diff", "nan"], ("--min_diff",), ()),
        ("tool-extract-save-to-folder", ["--save_to", "{box}/out.safetensors"], ("existing folder",),
         (("out.safetensors", "mkdir"),)),
    ]:
        argv = ["--model_org", tiny_model, "--model_tuned", tiny_model, "--save_to", "{box}/x.safetensors", *extra]
        b.add(case_id, "tools", extract, argv, "error", words, files, quick=True, absent=("x.safetensors",))
    mm = "tools/merge_models.py"
    for case_id, extra, words in [
        ("tool-merge-models-ratio-nan", ["--ratio", "nan"], ("--ratio",)),
        ("tool-merge-models-ratio-inf", ["--ratio", "inf"], ("--ratio",)),
        ("tool-merge-models-te-ratio-nan", ["--text_encoder_ratio", "nan"], ("--text_encoder_ratio",)),
        ("tool-merge-models-bad-mode", ["--mode", "blend"], ("--mode",)),
    ]:
        argv = ["--models", tiny_model, tiny_model, "--save_to", "{box}/m.safetensors", *extra]
        b.add(case_id, "tools", mm, argv, "error", words, (), quick=True, absent=("m.safetensors",))
    b.add("tool-merge-models-one-model", "tools", mm, ["--models", tiny_model, "--save_to", "{box}/m.safetensors"],
          "error", ("2 models",), quick=True, absent=("m.safetensors",))
    b.add("tool-merge-models-save-below-file", "tools", mm,
          ["--models", tiny_model, tiny_model, "--save_to", "{box}/a_file/m.safetensors"], "error", ("a_file",),
          (("a_file", "text", "x"),))
    b.add("tool-inspect-no-file", "tools", "tools/inspect_lora.py", [], "error", ("file",), quick=True)
    b.add("tool-convert-precision-bogus", "tools", "tools/convert_model.py",
          [tiny_model, "{box}/o.safetensors", "--precision", "fp8"], "error", ("--precision",), quick=True)
    finetune_metadata_cases(b)
    kohya_import_cases(b)
    hash_model_cases(b)
    vlm_caption_cases(b)


def vlm_caption_cases(b: Builder) -> None:
    """tools/caption_images_vlm.py: every argument checked before a model loads or a request is sent."""
    tool = "tools/caption_images_vlm.py"
    api = ["--backend", "openai", "--api_base", "http://127.0.0.1:9/v1", "--model", "m"]
    for case_id, argv, words, files in [
        ("tool-vlm-missing-folder", ["{box}/none"], ("none", "does not exist"), ()),
        ("tool-vlm-folder-is-file", ["{box}/a_file"], ("a_file", "is a file"), (("a_file", "text", "x"),)),
        ("tool-vlm-bad-backend", ["{box}/data", "--backend", "gpt9"], ("--backend", "gpt9", "florence2"), DATASET),
        ("tool-vlm-batch-zero", ["{box}/data", "--batch_size", "0"], ("--batch_size",), DATASET),
        ("tool-vlm-tokens-zero", ["{box}/data", "--max_new_tokens", "0"], ("--max_new_tokens",), DATASET),
        ("tool-vlm-bad-task", ["{box}/data", "--task", "<OD>"], ("--task", "<CAPTION>"), DATASET),
        ("tool-vlm-bad-style", ["{box}/data", "--prompt_style", "poem"], ("--prompt_style",), DATASET),
        ("tool-vlm-bad-length", ["{box}/data", "--caption_length", "epic"], ("--caption_length",), DATASET),
        ("tool-vlm-bad-dtype", ["{box}/data", "--dtype", "fp4"], ("--dtype",), DATASET),
        ("tool-vlm-temperature-nan", ["{box}/data", "--temperature", "nan"], ("--temperature",), DATASET),
        ("tool-vlm-caption-ext-escape", ["{box}/data", "--caption_extension", "../x"], ("caption_extension",),
         DATASET),
        ("tool-vlm-model-folder-missing", ["{box}/data", "--model_id", "{box}/no_model"], ("no_model",), DATASET),
        ("tool-vlm-api-no-base", ["{box}/data", "--backend", "openai", "--model", "m"], ("--api_base",), DATASET),
        ("tool-vlm-api-bad-base", ["{box}/data", "--backend", "openai", "--api_base", "localhost:8000", "--model",
                                   "m"], ("--api_base", "http"), DATASET),
        ("tool-vlm-api-no-model", ["{box}/data", "--backend", "openai", "--api_base", "http://h/v1"], ("--model",),
         DATASET),
        ("tool-vlm-api-key-env-unset", ["{box}/data", *api, "--api_key_env", "SDTRAIN_CORPUS_NO_SUCH_KEY"],
         ("SDTRAIN_CORPUS_NO_SUCH_KEY", "not set"), DATASET),
        ("tool-vlm-api-key-on-command-line", ["{box}/data", *api, "--api_key_env", "sk-live-1234"],
         ("NAME of an environment variable",), DATASET),
        ("tool-vlm-api-timeout-zero", ["{box}/data", *api, "--timeout", "0"], ("--timeout",), DATASET),
    ]:
        b.add(case_id, "tools", tool, argv, "error", words, files, quick=True)


def hash_model_cases(b: Builder) -> None:
    """tools/hash_model.py: nothing to hash, a missing file or folder, a cut or fake .safetensors file."""
    tool = "tools/hash_model.py"
    for case_id, argv, words, files in [
        ("tool-hash-nothing", [], ("no model files", "--folder"), ()),
        ("tool-hash-missing-file", ["{box}/none.safetensors"], ("none.safetensors", "not a file"), ()),
        ("tool-hash-folder-missing", ["--folder", "{box}/none", "--duplicates"], ("none", "not a folder"), ()),
        ("tool-hash-cut-safetensors", ["{box}/cut.safetensors"], ("cut.safetensors", "incomplete"),
         (("cut.safetensors", "text", "x" * 20),)),
        ("tool-hash-header-not-json", ["{box}/fake.safetensors"], ("fake.safetensors", "not JSON"),
         (("fake.safetensors", "bytes", b"\x08" + b"\x00" * 7 + b"not json"),)),
    ]:
        b.add(case_id, "tools", tool, argv, "error", words, files, quick=True)


def kohya_import_cases(b: Builder) -> None:
    """tools/import_kohya_config.py: a missing, broken or untrainable kohya_ss config, a wrong output name."""
    tool = "tools/import_kohya_config.py"
    for case_id, argv, words, files in [
        ("tool-kohya-import-missing", ["{box}/none.json", "{box}/o.toml"], ("none.json", "does not exist"), ()),
        ("tool-kohya-import-bad-json", ["{box}/k.json", "{box}/o.toml"], ("k.json", "JSON"),
         (("k.json", "text", "{bad"),)),
        ("tool-kohya-import-refused-type", ["{box}/k.json", "{box}/o.toml"], ("Kohya DyLoRA", "lycoris.kohya"),
         (("k.json", "text", '{"LoRA_type": "Kohya DyLoRA", "network_dim": 8}'),)),
        ("tool-kohya-import-not-toml", ["{box}/k.json", "{box}/o.txt"], ("o.txt", ".toml"),
         (("k.json", "text", '{"LoRA_type": "Standard"}'),)),
    ]:
        b.add(case_id, "tools", tool, argv, "error", words, files, quick=True, absent=("o.toml", "o.txt"))


def finetune_metadata_cases(b: Builder) -> None:
    """sd-scripts' fine-tuning preparation tools (issue 14): bad folders, metadata files and options."""
    bad_json = ("bad.json", "text", "{'img0': 1}")
    for case_id, entry, argv, words, files in [
        ("tool-merge-captions-missing-folder", "merge_captions_to_metadata", ["{box}/none", "{box}/m.json"],
         ("none",), ()),
        ("tool-merge-captions-bad-in-json", "merge_captions_to_metadata",
         ["{box}/data", "{box}/m.json", "--in_json", "{box}/bad.json"], ("bad.json", "not valid JSON"),
         (*DATASET, bad_json)),
        ("tool-merge-tags-recursive-no-full-path", "merge_dd_tags_to_metadata",
         ["{box}/data", "{box}/m.json", "--recursive"], ("--full_path",), DATASET),
        ("tool-clean-missing-json", "clean_captions_and_tags", ["{box}/none.json", "{box}/m.json"], ("none.json",), ()),
        ("tool-clean-entry-not-object", "clean_captions_and_tags", ["{box}/e.json", "{box}/m.json"],
         ("e.json", "'img0'", "not an object"), (("e.json", "text", '{"img0": 1}'),)),
        ("tool-latents-bad-max-resolution", "prepare_buckets_latents",
         ["{box}/data", "{box}/bad.json", "{box}/m.json", "builtin:tiny", "--max_resolution", "512x512"],
         ("--max_resolution",), (*DATASET, bad_json)),
        ("tool-latents-missing-in-json", "prepare_buckets_latents",
         ["{box}/data", "{box}/none.json", "{box}/m.json", "builtin:tiny"], ("none.json",), DATASET),
        ("tool-latents-alpha-mask", "prepare_buckets_latents",
         ["{box}/data", "{box}/bad.json", "{box}/m.json", "builtin:tiny", "--alpha_mask", "1"], ("--alpha_mask",),
         (*DATASET, bad_json)),
    ]:
        b.add(case_id, "tools", f"tools/{entry}.py", argv, "error", words, files, quick=True, absent=("m.json",))


def build_cases() -> list[Case]:
    """Every case of the corpus, in a fixed order."""
    b = Builder()
    for make in (config_cases, dataset_cases, image_cases, caption_cases, model_cases, lora_cases, resume_cases,
                 tool_cases):
        make(b)
    return b.cases


def needed_assets(case: Case) -> set[str]:
    """The shared assets a case reads: from its argv, its files and its own list."""
    text = " ".join(case.argv) + " ".join(str(f) for f in case.files)
    found = set(case.assets)
    for name in ("tiny_sd1.safetensors", "good_lora.safetensors"):
        if "{assets}/" + name in text:
            found.add(name.split(".")[0].replace("tiny_sd1", "tiny_sd1_file"))
    recipes = {f[1] for f in case.files}
    if recipes & {"model_missing_keys", "model_nan"}:
        found.add("tiny_sd1_file")
    if "diffusers_without_unet" in recipes:
        found.add("tiny_sd1_folder")
    if "state" in recipes:
        found.add("state")
    return found


#: how many cases run in the fast tier (the tier's budget is tight: ~20 ms each)
FAST_TIER = 60


def fast_tier(cases: list[Case]) -> set[str]:
    """Ids of the fast-tier cases: validation-only cases that need no shared asset, spread over the list."""
    candidates = [c for c in cases if c.quick and not needed_assets(c)]
    step = max(1, len(candidates) // FAST_TIER)
    return {c.id for c in candidates[::step][:FAST_TIER]}


def summary(cases: list[Case]) -> str:
    by_category = Counter(c.category for c in cases)
    by_expect = Counter(c.expect for c in cases)
    fast = fast_tier(cases)
    lines = [f"{len(cases)} cases ({len(fast)} in the fast tier: " + ", ".join(
        f"{k} {n}" for k, n in Counter(c.category for c in cases if c.id in fast).items()) + ")"]
    lines += [f"  {name:10s} {count:4d}  ({', '.join(f'{e} {n}' for e, n in sorted(Counter(c.expect for c in cases if c.category == name).items()))})"
              for name, count in by_category.items()]
    lines.append("  by expectation: " + ", ".join(f"{e} {n}" for e, n in sorted(by_expect.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the count per category and expectation")
    parser.add_argument("--show", metavar="ID", help="print one case")
    args = parser.parse_args(argv)
    cases = build_cases()
    if args.show:
        match = [c for c in cases if c.id == args.show]
        if not match:
            print(f"no case {args.show!r}", file=sys.stderr)
            return 2
        print(match[0])
        return 0
    print(summary(cases) if args.list else "\n".join(f"{c.id}\t{c.category}\t{c.expect}" for c in cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
