"""The end-of-run evidence: did this run learn anything? (issue 9)

After the last epoch, k-means(#classes) NMI of every block of the trained network beside the same
architecture at its random initialisation, on a fixed subsample of the training images, with the
``dcx eval --protocol cluster`` "l2" variant (mean of its seeds), so the two agree. The summary
names the best block and its gain over random.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dcx.training.callbacks import Callback
from dcx.evaluation.data import clustering_data
from dcx.evaluation.protocols import CLUSTER_RUNS
from dcx.evaluation.runs import evaluate_network
from dcx.training.network import build_network

if TYPE_CHECKING:  # pragma: no cover
    from dcx.training.engine import Engine

log = logging.getLogger("dcx.evaluation")

#: Images the end-of-run probe clusters (a fixed seeded sample when the dataset is larger).
PROBE_IMAGES = 3000


def block_nmi(engine: "Engine", max_images: int = PROBE_IMAGES) -> dict[str, Any] | None:
    """Per block, learned vs random-init k-means(#classes) NMI; the best block and its gain."""
    s = engine.s
    images = s.images
    if images.labels is None or images.num_classes is None or images.num_classes < 2:
        return None
    n = len(images)
    idx = np.arange(n) if n <= max_images else np.sort(np.random.default_rng(s.config.seed).choice(n, max_images, False))
    data = clustering_data(images, idx, s.config.dataset, f"{len(idx)} training images")
    cfg = s.config
    rng_state = torch.get_rng_state()
    torch.manual_seed(cfg.seed)  # the run's own initialisation, as setup() built it
    random_net = build_network(s.backbone, images.channels, cfg.image_size, cfg.width, cfg.sobel).to(s.device)
    torch.set_rng_state(rng_state)
    common = dict(protocols=["cluster"], layers="all", image_size=cfg.image_size, device=s.device,
                  batch_size=max(cfg.batch_size, 128), workers=cfg.workers, progress=engine.progress,
                  cluster_variants=("l2",))
    learned = evaluate_network(s.model, data, name="learned", **common)["cluster"]
    random = evaluate_network(random_net, data, name="random", **common)["cluster"]
    blocks = {b: {"learned": learned[b]["l2"]["nmi"], "random": random[b]["l2"]["nmi"]} for b in learned}
    best = max(blocks, key=lambda b: blocks[b]["learned"])
    return {
        "block": best, "learned": blocks[best]["learned"], "random": blocks[best]["random"],
        "gain": blocks[best]["learned"] - blocks[best]["random"], "images": int(len(idx)),
        "metric": f"k-means(#classes) NMI after L2, mean of the eval protocol's {CLUSTER_RUNS} seeds",
        "runs": CLUSTER_RUNS,
        "blocks": blocks,
    }


class BlockProbe(Callback):
    """Adds ``best_block`` to the summary and logs it (rank 0; labelled datasets only)."""

    def on_fit_end(self, engine: "Engine", final: dict[str, Any], summary: dict[str, Any]) -> None:
        if not engine.world.is_main:
            return
        result = block_nmi(engine)
        if result is None:
            return
        summary["best_block"] = result
        log.info("best block %s: k-means NMI %.3f learned vs %.3f random (%+.3f, %d images)", result["block"],
                 result["learned"], result["random"], result["gain"], result["images"])
