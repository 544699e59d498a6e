"""The project's benchmark: each training row beside the floor, on one machine in one run, as a table (and JSON)
with PASS/FAIL per target.

    python bench/run.py [--quick] [--family sd1|tiny] [--device cpu|cuda] [--json PATH]

Every row is a real process (the trainer itself, or a small worker for the floor and the VAE's own cost),
measured from outside: step times from the trainer's progress events (median after warm-up), peak memory of
the whole process tree (RSS and PSS sampled every 20 ms, plus the kernel's peak RSS; on a GPU the trainer's
``torch.cuda.max_memory_allocated``). See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import GIB, ProcessResult, run_measured  # noqa: E402
from bench.workloads import REPO, cache_root, db_config, lora_config, pictures, sd15_model, write_config  # noqa: E402
from library.util.host_memory import use_huge_pages  # noqa: E402

#: sd-scripts on this kind of machine (2-core CPU), same model, data and arguments (issue 15's figures).
SDSCRIPTS_TINY_STEP_S = 0.042
SDSCRIPTS_LAUNCH_LESS_ENCODE_S = 17.0


@dataclass
class Row:
    name: str
    step_s: float | None = None
    ratio: float | None = None  # step time / floor step time
    peak_rss: int | None = None
    peak_pss: int | None = None
    mem_ratio: float | None = None  # peak / the floor's peak
    extra: dict = field(default_factory=dict)


#: ``--quick`` on 2 CPU cores, everything included
QUICK_LIMIT_S = 480.0


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    unit: str = "x"

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value <= self.limit


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.root = cache_root()
        self.work = self.root / "runs"
        self.rows: list[Row] = []
        self.targets: list[Target] = []
        self.facts: dict = {}
        self.started = time.time()

    # -- processes --------------------------------------------------------------------------------------
    def worker(self, script: str, *argv: str) -> ProcessResult:
        result = run_measured([str(REPO / "bench" / script), *argv], cwd=REPO)
        if result.failed():
            raise SystemExit(f"bench: {script} failed: {result.failed()}")
        return result

    def train(self, name: str, trainer: str, options: dict) -> ProcessResult:
        out = self.work / name
        shutil.rmtree(out, ignore_errors=True)
        path = write_config(out / "config.toml", {**options, "output_dir": str(out)})
        script = {"network": "train_network.py", "db": "train_db.py"}[trainer]
        result = run_measured([str(REPO / script), "--config_file", str(path)], cwd=REPO)
        if result.failed():
            raise SystemExit(f"bench: the {name} run failed: {result.failed()}")
        return result

    def peak(self, result: ProcessResult) -> int:
        """The run's peak memory: host RSS of the process tree on CPU; torch.cuda.max_memory_allocated on a GPU."""
        if self.args.device == "cuda":
            done = result.first("done") or result.output or {}
            return done.get("cuda_peak_bytes") or 0
        return result.peak_rss

    def steps(self, result: ProcessResult, warmup: int) -> float:
        """Median seconds per step, leaving out the first ``warmup`` steps; a one-step run (--quick's
        DreamBooth rows) counts its only step, from the loop's start to its end."""
        gaps = result.step_times()[max(0, warmup - 1):]
        if gaps:
            return statistics.median(gaps)
        start, step = result.first("start"), result.first("step")
        return step["time"] - start["time"] if start and step else float("nan")

    @staticmethod
    def first_step(result: ProcessResult) -> float:
        """Seconds the first step takes, from the loop's start (where launch -> first step ends) to the step's
        end: kernels' first calls and anything imported lazily on the way."""
        start, step = result.first("start"), result.first("step")
        return step["time"] - start["time"] if start and step else float("nan")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in asdict(row).items() if v is not None and k != "name"),
              flush=True)
        return row

    # -- the SD1.5-sized rows ---------------------------------------------------------------------------
    def sd15(self) -> None:
        res = self.args.resolution or (512 if self.args.device == "cuda" else 256)
        model = str(sd15_model(self.root))
        train_dir = pictures(self.root, 8 if self.quick else 16)
        for npz in train_dir.rglob("*.npz"):
            npz.unlink()
        warm, measured = (1, 4) if self.quick else (2, 8)
        device = ("--device", self.args.device)

        def measure_floor():
            return self.worker("floor.py", model, "--resolution", str(res), "--steps", str(measured),
                               "--warmup", str(warm), *device)

        floor = measure_floor()
        f = floor.output
        self.facts.update(matmul_gflops=f["matmul_gflops"], floor_flops=f["flops"])
        base = self.add(Row("floor: UNet forward + backward", f["step_s"], 1.0, self.peak(floor), floor.peak_pss, 1.0,
                            {"gflop_per_step": f["flops"] / 1e9, "achieved_gflops": f["achieved_gflops"],
                             "matmul_gflops": f["matmul_gflops"]}))
        self.floor = base

        def vae_cost() -> float:
            return self.worker("vae_cost.py", model, str(train_dir), "--resolution", str(res), "--batch_size", "4",
                               *device).output["s_per_image"]

        vae_before = vae_cost()

        def lora(name, steps=warm + measured, **extra):
            folder = "lora_" + "_".join(str(v) for v in extra.values() if isinstance(v, (str, bool)))[:40]
            options = lora_config(model, train_dir, self.work / folder, steps, res, cache_latents_to_disk=True,
                                  vae_batch_size=4, **extra)
            result = self.train(folder, "network", options)
            step = self.steps(result, warm)
            peak = self.peak(result)
            return result, self.add(Row(name, step, step / base.step_s, peak, result.peak_pss, peak / base.peak_rss,
                                        {"peak in": result.peak_phase()}))

        cold, row = lora("LoRA dim 16, AdamW")
        vae_after = vae_cost()  # the caching is held to the mean of the encoder's cost just before and just after
        vae_s = (vae_before + vae_after) / 2
        cached = cold.first("latents_cached") or {}
        first = cold.first("start")  # the loop begins: model loaded, latents and captions cached
        encode_s = cached.get("seconds", float("nan"))
        launch_first = first["time"] - cold.launched
        row.extra.update(launch_to_first_step_s=launch_first, first_step_s=self.first_step(cold), caching_s=encode_s,
                         caching_images=cached.get("encoded"))
        caching = self.add(Row("latent caching (per picture)", encode_s / max(1, cached.get("encoded") or 1),
                               extra={"vae_encoder_s_per_picture": vae_s, "vae_encoder_before": vae_before,
                                      "vae_encoder_after": vae_after}))
        caching.ratio = caching.step_s / vae_s
        # a shared machine's speed drifts by 10-20 % over minutes: the two rows held to ≤ 1.03x and ≤ 1.5x of the
        # floor are each compared with the mean of the floors measured just before and just after them
        between = measure_floor().output["step_s"]
        reused, gc_row = lora("LoRA dim 16, AdamW, gradient checkpointing", gradient_checkpointing=True)
        reused_first = reused.first("start")["time"] - reused.launched
        after = measure_floor().output["step_s"]
        first_floor = base.step_s
        row.ratio = row.step_s / ((first_floor + between) / 2)
        gc_row.ratio = gc_row.step_s / ((between + after) / 2)
        base.extra.update(step_s_first=first_floor, step_s_between=between, step_s_after=after)
        base.step_s = (first_floor + between + after) / 3  # what the later rows' x floor divide by
        gc_row.extra["launch_to_first_step_s (disk cache reused)"] = reused_first
        self.targets += [
            Target("sd15 LoRA step / floor", row.ratio, 1.03),
            Target("sd15 LoRA peak memory / floor's", row.mem_ratio, 1.10),
            Target("sd15 LoRA + checkpointing step / floor", gc_row.ratio, 1.5),
            Target("sd15 LoRA + checkpointing peak / floor's", gc_row.mem_ratio, 0.95),
            Target("latent caching / VAE encoder's own cost", caching.ratio, 1.1),
            Target("launch -> first step, less encoding", launch_first - vae_s * (cached.get("encoded") or 0),
                   SDSCRIPTS_LAUNCH_LESS_ENCODE_S, "s"),
            Target("launch -> first step, disk cache reused", reused_first, 12.0, "s"),
        ]
        few = warm + (1 if self.quick else 5)
        for optimizer in ("AdamW8bit", "Lion", "AdaFactor", "Prodigy"):
            extra = {"learning_rate": 1.0} if optimizer == "Prodigy" else {}
            if optimizer == "AdaFactor":
                extra["optimizer_args"] = ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
            lora(f"LoRA dim 16, {optimizer}", steps=few, optimizer_type=optimizer, **extra)
        self.dreambooth(model, train_dir, res, warm)

    def dreambooth(self, model: str, train_dir: Path, res: int, warm: int) -> None:
        """Full UNet fine-tunes: the optimizers' memory, and whether loader workers add any (threads here: no
        forked copy of the model). One measured step in --quick: the peak is reached at the first
        optimizer step, when its state is allocated."""
        steps = 1 if self.quick else warm + 3
        adafactor = {"optimizer_type": "AdaFactor", "fused_backward_pass": True,
                     "optimizer_args": ["relative_step=False", "scale_parameter=False", "warmup_init=False"]}
        rows = {}
        for key, name, extra in (
            ("adamw", "DreamBooth, AdamW", {}),
            ("8bit", "DreamBooth, AdamW8bit", {"optimizer_type": "AdamW8bit"}),
            ("adafactor", "DreamBooth, AdaFactor + fused backward", adafactor),
            ("workers", "DreamBooth, AdaFactor + fused, 2 loader workers",
             {**adafactor, "max_data_loader_n_workers": 2, "persistent_data_loader_workers": True}),
        ):
            options = db_config(model, train_dir, self.work / f"db_{key}", steps, res, cache_latents_to_disk=True,
                                vae_batch_size=4, **extra)
            result = self.train(f"db_{key}", "db", options)
            step, peak, floor = self.steps(result, warm), self.peak(result), self.floor
            rows[key] = self.add(Row(name, step, step / floor.step_s, peak, result.peak_pss,
                                     peak / floor.peak_rss, {"peak in": result.peak_phase()}))
        self.targets += [
            Target("DreamBooth AdamW8bit peak / AdamW fp32 peak", rows["8bit"].peak_rss / rows["adamw"].peak_rss,
                   0.65),
            Target("DreamBooth loader workers: peak / without", rows["workers"].peak_rss /
                   rows["adafactor"].peak_rss, 1.02),
        ]

    # -- the built-in tiny model -------------------------------------------------------------------------
    def tiny(self) -> None:
        train_dir = pictures(self.root, 8, size=256)
        steps = 40 if self.quick else 120
        options = lora_config("builtin:tiny", train_dir, self.work / "tiny", steps, 128, vae_batch_size=8)
        options["network_dim"] = 8
        result = self.train("tiny", "network", options)
        step = self.steps(result, 5)
        first = result.first("start")["time"] - result.launched
        self.add(Row("tiny: LoRA step", step, peak_rss=result.peak_rss, peak_pss=result.peak_pss,
                     extra={"launch_to_first_step_s": first, "first_step_s": self.first_step(result),
                            "steps_per_s": 1 / step}))
        floor = self.worker("floor.py", "builtin:tiny", "--resolution", "128", "--steps", "40" if self.quick else "120",
                            "--warmup", "5").output
        self.add(Row("tiny: floor (its UNet forward + backward)", floor["step_s"], 1.0,
                     extra={"LoRA step / this floor": step / floor["step_s"]}))
        self.targets += [
            Target("tiny: launch -> first step", first, 6.0, "s"),
            Target("tiny: median step", step, 0.6 * SDSCRIPTS_TINY_STEP_S, "s"),
        ]

    # -- output ------------------------------------------------------------------------------------------
    def table(self) -> str:
        lines = [f"{'row':<44} {'s/step':>8} {'x floor':>8} {'peak RSS':>9} {'peak PSS':>9} {'x floor':>8}  notes"]
        for r in self.rows:
            def num(v, fmt):
                return format(v, fmt) if v is not None else "-"
            notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.extra.items())
            lines.append(f"{r.name:<44} {num(r.step_s, '8.3f')} {num(r.ratio, '8.3f')} "
                         f"{num(r.peak_rss and r.peak_rss / GIB, '8.2f')}G {num(r.peak_pss and r.peak_pss / GIB, '8.2f')}G "
                         f"{num(r.mem_ratio, '8.3f')}  {notes}")
        lines.append("")
        lines.append(f"{'target':<52} {'value':>9} {'limit':>9}  result")
        for t in self.targets:
            value = "-" if t.value is None else f"{t.value:.3f}{t.unit}"
            lines.append(f"{t.name:<52} {value:>9} {t.limit:>8.3f}{t.unit}  {'PASS' if t.passed else 'FAIL'}")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"quick": self.quick, "family": self.args.family, "device": self.args.device,
                "seconds": time.time() - self.started, "facts": self.facts,
                "rows": [asdict(r) for r in self.rows],
                "targets": [{**asdict(t), "passed": t.passed} for t in self.targets]}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer measured steps (under 8 minutes on 2 cores)")
    p.add_argument("--family", choices=["sd1", "tiny"], default=None, help="only this model's rows (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--resolution", type=int, default=None, help="sd15 rows' resolution (default 256 on CPU)")
    p.add_argument("--json", default=str(REPO / "output" / "bench" / "bench.json"), help="where the JSON goes")
    args = p.parse_args(argv)
    bench = Bench(args)
    bench.facts["huge_pages"] = use_huge_pages()  # every worker inherits it, as the trainers set it themselves
    if args.family in (None, "tiny"):
        bench.tiny()
    if args.family in (None, "sd1"):
        bench.sd15()
    if args.quick and args.family is None and args.device == "cpu":
        # the issue's own target for this command (model building on a first run included)
        bench.targets.append(Target("bench --quick: whole run", time.time() - bench.started, QUICK_LIMIT_S, "s"))
    print()
    print(bench.table())
    bench.write_json(Path(args.json))
    print(f"\n{time.time() - bench.started:.0f} s; JSON: {args.json}")
    return 0 if all(t.passed for t in bench.targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
