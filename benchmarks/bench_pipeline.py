"""The training pipeline against the bare training step (issue 37): images/s of a default epoch's
training, in one process, alternating three ways of feeding the same engine, network and step:

- ``batched``: what dcx does now: images decoded once (uint8 at the training size), each batch
  augmented as a whole on the device (``dcx.data``);
- ``per-image``: the pipeline of dcx 0.2.0 and before, kept here as the reference: every image
  decoded again and put through torchvision's per-image transforms (``RandomResizedCrop``,
  ``RandomAffine``, ``ElasticTransform``, flips, jitter) in the main process (0 workers on CPU),
  and the network in 0.2.0's memory format on the CPU (NCHW: channels_last was for CUDA only);
- ``bare``: pre-made batches (already augmented, on the device): the step alone.

Workloads: the default k-means run on a 20,000-image 28x28 folder (rendered characters, the
folder's own defaults) and SwAV's default multi-crop on the embedded digits. Then one ``dcx run``
of the folder through the CLI, whose metrics row gives the epoch's time split (data / step / wait).

    nice python benchmarks/bench_pipeline.py [--reps 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision import transforms as T

from _report import ROOT, environment, write_results, write_section

from dcx import data as D
from dcx.core.config import RunConfig
from dcx.training.engine import Engine
from dcx.training.setup import setup


def per_image_transform(size: int, channels: int, flip: bool, scale: tuple[float, float], augment: str,
                        jitter: float):
    """dcx 0.2.0's ``train_transform``: torchvision's transforms of one PIL image."""
    steps: list = [T.RandomResizedCrop(size, scale=scale, antialias=True)]
    if augment in ("affine", "elastic"):
        steps.append(T.RandomAffine(degrees=12.0, translate=(0.08, 0.08), scale=(0.9, 1.1), shear=8.0))
    if augment == "elastic":
        steps.append(T.RandomApply([T.ElasticTransform(alpha=float(size), sigma=size / 8)], p=0.5))
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if jitter > 0:
        colour = dict(saturation=jitter, hue=min(jitter / 4, 0.5)) if channels == 3 else {}
        steps.append(T.RandomApply([T.ColorJitter(brightness=jitter, contrast=jitter, **colour)], p=0.8))
        steps.append(T.RandomApply([T.GaussianBlur(max(3, size // 10 | 1), sigma=(0.1, 2.0))], p=0.5))
    return T.Compose([*steps, T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)])


class Sized:
    """An epoch's batches with the length the engine's progress bar asks for."""

    def __init__(self, length: int, batches) -> None:
        self.length, self.batches = length, batches

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return self.batches()


class PerImageBatches:
    """The dcx 0.2.0 loader: decode + per-image transforms of every view in a DataLoader."""

    def __init__(self, engine: Engine) -> None:
        cfg, aug = engine.cfg, engine.batches.augment
        channels = engine.s.images.channels
        transforms = [per_image_transform(v.geometry.size, channels, v.geometry.flip, v.geometry.scale,
                                          cfg.augment, v.jitter) for v in aug.views]
        self.dataset = D.IndexedImages(engine.s.images, lambda img: [t(img) for t in transforms])
        self.workers, self.device = cfg.workers, engine.device

    def epoch(self, batch_sampler, seed):
        def batches():
            for views, idx, failed in D.loader(self.dataset, 0, self.workers, batch_sampler=batch_sampler, seed=seed):
                yield [v.to(self.device) for v in views], idx, failed

        return Sized(len(batch_sampler), batches)

    def time_split(self, seconds):
        return {}


class PremadeBatches:
    """The same number of steps over a few batches made once: the step without any data work."""

    def __init__(self, engine: Engine, objective_sampler, n_total: int) -> None:
        sampler = D.ShardedBatches(objective_sampler(n_total, 0), engine.cfg.batch_size)
        made = iter(engine.batches.epoch(sampler, 0))
        self.batches = [next(made) for _ in range(min(4, len(sampler)))]

    def epoch(self, batch_sampler, seed):
        def batches():
            for i, batch in enumerate(batch_sampler):
                views, _, failed = self.batches[i % len(self.batches)]
                yield views, torch.as_tensor(batch[: len(views[0])]), failed

        return Sized(len(batch_sampler), batches)

    def time_split(self, seconds):
        return {}


def measure(config: RunConfig, reps: int) -> dict:
    engine = Engine(setup(config))
    objective, _ = engine.epochs.begin(0)  # extract + cluster once: training needs the epoch's targets
    n_total = engine.images_per_epoch()
    batched = engine.batches
    contenders = {"batched": batched, "per-image": PerImageBatches(engine),
                  "bare": PremadeBatches(engine, objective.sampler, n_total)}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    steps = engine.steps_per_epoch
    images = steps * engine.cfg.batch_size
    for rep in range(reps):
        for name, batches in contenders.items():
            engine.batches = batches
            today = name == "per-image" and engine.device.type == "cpu"
            if today:
                engine.s.model.to(memory_format=torch.contiguous_format)
            torch.manual_seed(rep)
            t = time.perf_counter()
            engine.train_epoch(rep, objective)
            times[name].append(time.perf_counter() - t)
            if today and engine.channels_last:
                engine.s.model.to(memory_format=torch.channels_last)
            print(f"  {name}: {images / times[name][-1]:.0f} images/s", flush=True)
    engine.batches = batched
    rate = {name: images / statistics.median(ts) for name, ts in times.items()}
    return {
        "images": len(engine.s.images), "images_per_epoch": images, "batch_size": engine.cfg.batch_size,
        "image_size": engine.cfg.image_size, "augment": engine.cfg.augment, "views": len(batched.augment),
        "seconds": times, "images_per_s": rate,
        "batched_over_bare": rate["batched"] / rate["bare"], "per_image_over_bare": rate["per-image"] / rate["bare"],
        "batched_over_per_image": rate["batched"] / rate["per-image"],
    }


def cli_epoch(folder: Path, device: str) -> dict:
    """One default epoch of ``dcx run`` on the folder: its metrics row's time split."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run([sys.executable, "-m", "dcx", "run", "--dataset", "imagefolder", "--data-root", str(folder),
                        "--epochs", "1", "--no-probe", "--no-report", "--quiet", "--device", device, "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        cfg = (out / "config.toml").read_text()
    keys = ("time_train", "time_data", "time_step", "time_wait", "time_extract", "time_cluster", "time_epoch")
    return {"row": {k: row[k] for k in keys if k in row}, "config": cfg}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="pipeline")
    parser.add_argument("--per-class", type=int, default=2000, help="folder images per class (10 classes)")
    args = parser.parse_args()
    from dcx.datasets.characters import write_folder

    result = {**environment(), "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "characters"
        write_folder(folder, per_class=args.per_class, size=28, seed=0)
        print("k-means, 20,000-image folder", flush=True)
        result["folder"] = measure(RunConfig(dataset="imagefolder", data_root=str(folder), probe=False,
                                             device=args.device), args.reps)
        print("swav, digits", flush=True)
        result["swav_digits"] = measure(RunConfig(clusterer="swav", probe=False, device=args.device), args.reps)
        result["cli"] = cli_epoch(folder, args.device)
    result["load_after"] = environment()["machine"]
    write_results(args.out, result)
    f, s, c = result["folder"], result["swav_digits"], result["cli"]["row"]
    rows = "\n".join(
        f"| {name} | {r['images_per_s']['per-image']:.0f} | {r['images_per_s']['batched']:.0f} | "
        f"{r['images_per_s']['bare']:.0f} | {r['per_image_over_bare']:.2f}x | {r['batched_over_bare']:.2f}x | "
        f"{r['batched_over_per_image']:.2f}x |"
        for name, r in (("k-means, 20,000 28x28 images (folder defaults, " + f["augment"] + ")", f),
                        (f"SwAV multi-crop ({s['views']} views), 1,797 digits", s)))
    write_section(f"Training pipeline ({args.device})", f"""
`python benchmarks/bench_pipeline.py --device {args.device}` ({result['when']}; {result['machine']};
results in `benchmarks/results/{args.out}.json`). Images/s of a default epoch's training, median of
{args.reps}, the three feeds alternating in one process on the same engine: dcx 0.2.0's per-image
torchvision transforms, today's batched augmentation of images decoded once, and the bare step on
pre-made batches.

| workload | per-image (0.2.0) | batched | bare step | per-image / bare | batched / bare | batched / per-image |
|---|---|---|---|---|---|---|
{rows}

One default epoch of `dcx run` on the folder through the CLI: training {c['time_train']:.1f} s =
data {c.get('time_data', 0):.1f} s + step {c.get('time_step', 0):.1f} s + waits {c.get('time_wait', 0):.1f} s
(extraction {c.get('time_extract', 0):.1f} s, clustering {c.get('time_cluster', 0):.1f} s).
{GPU_NOTE if args.device == "cpu" else ""}""")


GPU_NOTE = """
On a GPU the figures are unmeasured: no GPU was lent to the session that built the batched pipeline.
`python benchmarks/bench_pipeline.py --device cuda` (and `bench_step.py --device cuda`) records them
in their own sections; on a GPU the augmentation runs there too, from images decoded once into the
GPU's memory, and the epoch's data time is the augmentation's device time (CUDA events).
"""


if __name__ == "__main__":
    main()
