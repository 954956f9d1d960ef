"""Images into training and extraction batches: per-image transforms (``transforms``), reproducible
sharded loaders (``loading``) and sampling uniform over pseudo-labels (``sampling``)."""

from dcx.data.loading import IndexedImages, ShardedBatches, collate, derive_seed, loader
from dcx.data.transforms import AUGMENTS, MEAN, MIN_CROP_SCALE, STD, MultiCrop, eval_transform, train_transform

__all__ = ["AUGMENTS", "MEAN", "MIN_CROP_SCALE", "STD", "IndexedImages", "MultiCrop", "ShardedBatches", "collate",
           "derive_seed", "eval_transform", "loader", "train_transform"]
