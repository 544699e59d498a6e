"""Merge LoRA files into a checkpoint (with --sd_model) or into one LoRA (concatenated ranks, or SVD).

python tools/merge_lora.py --sd_model base.safetensors --models a.safetensors b.safetensors --ratios 0.8 0.5 --save_to merged.safetensors
python tools/merge_lora.py --models a.safetensors b.safetensors --ratios 1 0.5 --svd --new_rank 32 --save_to ab.safetensors
python tools/merge_lora.py --flux_model flux1-dev.safetensors --clip_l clip_l.safetensors --clip_l_save_to clip_l_merged.safetensors --models a.safetensors --ratios 0.8 --save_to flux1-dev-merged.safetensors
LoHa / LoKr files merge into a checkpoint (--sd_model); --block_weights works in both modes (25 values for
SD1/SD2, 23 for SDXL, 57 for FLUX.1, or the webui LoRA Block Weight's 17/12-value strings and presets such as
INALL). SDXL: a single file in, an SGM single file (or a diffusers folder) out.
FLUX.1 (sd-scripts' flux_merge_lora.py options): the transformer file in BFL's layout (--flux_model, or
--sd_model) and optionally clip_l / t5xxl are merged key by key; each file keeps its keys and dtypes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.tools.models.common import PRECISION_CHOICES, run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sd_model", help="base checkpoint (file or diffusers folder); omit to merge LoRAs together"
    )
    parser.add_argument("--flux_model", help="FLUX.1 transformer file (BFL layout) to merge into; output --save_to")
    parser.add_argument("--clip_l", help="FLUX.1 clip_l file to merge the lora_te1_ modules into")
    parser.add_argument("--clip_l_save_to", help="output file of the merged clip_l")
    parser.add_argument("--t5xxl", help="FLUX.1 t5xxl file to merge the lora_te3_ modules into")
    parser.add_argument("--t5xxl_save_to", help="output file of the merged t5xxl")
    parser.add_argument("--models", nargs="+", required=True, help="LoRA files (.safetensors / .ckpt / .pt)")
    parser.add_argument("--ratios", nargs="+", type=float, help="one ratio per LoRA (default 1.0 each)")
    parser.add_argument(
        "--save_to", help="output file (or a folder: diffusers, with --sd_model); with --flux_model its output"
    )
    parser.add_argument("--save_precision", choices=PRECISION_CHOICES, help="default: the input's precision")
    parser.add_argument(
        "--precision", choices=("float",), default="float",
        help="precision of the merge arithmetic: always float32 (sd-scripts' recommended value)",
    )
    parser.add_argument(
        "--v2", action="store_true", default=None, help="base model is SD 2.x (detected if omitted)"
    )
    parser.add_argument(
        "--block_weights",
        help="comma-separated UNet block weights scaling each LoRA module by its block: 25 for SD1/SD2 "
        "(IN00..IN11,M00,OUT00..OUT11), 23 for SDXL (BASE,IN00..IN08,M00..M02,OUT00..OUT08,OUT), 57 for FLUX.1 "
        "(D00..D18,S00..S37); or the webui LoRA Block Weight forms: 17 values for SD1/SD2 "
        "(BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03..OUT11), 12 for SDXL (BASE,IN04,IN05,IN07,IN08,M00,OUT00..OUT05), "
        "26, or a preset (NONE, ALL, INS, IND, INALL, MIDD, OUTD, OUTS, OUTALL, ALL0.5); their BASE weights the text encoders",
    )
    parser.add_argument("--concat", action="store_true", help="LoRA merge: concatenate ranks (the default)")
    parser.add_argument(
        "--svd", action="store_true", help="LoRA merge: re-factorise the sum by SVD to --new_rank"
    )
    parser.add_argument("--new_rank", type=int, help="rank of the SVD merge")
    parser.add_argument(
        "--new_conv_rank", type=int, help="rank of 3x3 conv modules in the SVD merge (default new_rank)"
    )
    parser.add_argument("--device", help="device for the SVD, e.g. cuda")
    parser.add_argument(
        "--loading_device", help="FLUX.1 merge: device the merged weights are computed on (default cpu)"
    )
    parser.add_argument("--working_device", help="FLUX.1 merge: the same as --loading_device (sd-scripts' name)")
    parser.add_argument(
        "--allow_unsafe_pickle", action="store_true", help="load .ckpt models that need full pickle"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.svd and not args.new_rank:
        parser.error("--svd needs --new_rank")
    part_files = {"flux_model": args.flux_model, "clip_l": args.clip_l, "t5xxl": args.t5xxl}
    if args.sd_model and (args.svd or args.new_rank):
        parser.error("--svd/--new_rank merge LoRAs together; drop them when merging into --sd_model")
    if args.sd_model and any(part_files.values()):
        parser.error("--sd_model merges into a whole checkpoint; --flux_model/--clip_l/--t5xxl into FLUX.1's part "
                     "files: give one or the other")
    if any(part_files.values()) and (args.svd or args.new_rank):
        parser.error("--svd/--new_rank merge LoRAs together; drop them when merging into --flux_model")
    if not args.save_to and not (args.clip_l_save_to or args.t5xxl_save_to):
        parser.error("--save_to is required")

    def body() -> int:
        from library.tools.models import merge_lora
        from library.tools.models.resize_lora import summary_lines

        if any(part_files.values()):
            from library.tools.models.part_files import merge_into_part_files

            save_to = {"flux_model": args.save_to, "clip_l": args.clip_l_save_to, "t5xxl": args.t5xxl_save_to}
            report = merge_into_part_files(
                part_files,
                save_to,
                args.models,
                args.ratios,
                save_precision=args.save_precision,
                device=args.working_device or args.loading_device,
                block_weights=args.block_weights,
            )
            print("\n".join(report.lines()))
            for option, path in save_to.items():
                if path and part_files[option]:
                    print(f"saved {path}")
            return 0
        if args.sd_model:
            report = merge_lora.merge_into_checkpoint(
                args.sd_model,
                args.models,
                args.ratios,
                args.save_to,
                save_precision=args.save_precision,
                v2=args.v2,
                block_weights=args.block_weights,
                allow_unsafe_pickle=args.allow_unsafe_pickle,
            )
            print("\n".join(report.lines()))
        else:
            _, rows = merge_lora.merge_lora_files(
                args.models,
                args.ratios,
                args.save_to,
                new_rank=args.new_rank if args.svd else None,
                new_conv_rank=args.new_conv_rank,
                save_precision=args.save_precision,
                device=args.device,
                block_weights=args.block_weights,
            )
            print("\n".join(summary_lines(rows)))
        print(f"saved {args.save_to}")
        return 0

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
