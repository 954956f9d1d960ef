"""Images into training and extraction batches: decoded once at the training size (``decoded``),
augmented as whole batches on the device (``transforms``, ``geometry``, ``photometric``,
``pipeline``), reproducible sharded loaders (``loading``) and sampling uniform over pseudo-labels
(``sampling``)."""

from dcx.data.decoded import DecodedImages
from dcx.data.loading import IndexedImages, ShardedBatches, collate, derive_seed, loader
from dcx.data.pipeline import TrainingBatches
from dcx.data.transforms import (AUGMENTS, MEAN, MIN_CROP_SCALE, STD, Augment, decode_transform, eval_transform,
                                 multi_crop, normalize, train_augment)

__all__ = ["AUGMENTS", "MEAN", "MIN_CROP_SCALE", "STD", "Augment", "DecodedImages", "IndexedImages", "ShardedBatches",
           "TrainingBatches", "collate", "decode_transform", "derive_seed", "eval_transform", "loader", "multi_crop",
           "normalize", "train_augment"]
