"""Small plugins for testing the conformance kit: one good plugin per kind, and variants of it with
one deliberate bug each. ``BROKEN`` pairs each broken plugin with the check that must catch it."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image
from torch import nn

from dcx.core.contracts import (
    Backbone, BackboneNet, Clusterer, CropSpec, Dataset, ImageSet, OnlineClusterer, Partition, RunDefaults,
    TrainingHead, linear_head,
)
from dcx.core.errors import InputError
from dcx.algorithms.kmeans import kmeans
from dcx.core.options import Option
from dcx.clusterers.kmeans import KMeans as DcxKMeans

# ----------------------------------------------------------------------------- offline clusterers


class GoodOffline(Clusterer):
    """k-means through dcx.algorithms.kmeans: passes every check."""

    name = "goodoffline"
    dcx_api = "3.0"
    options = (Option("k", int, 5, "clusters", min=1), Option("niter", int, 10, "iterations", min=1))

    def fit(self, features, context):
        res = kmeans(features, self.params["k"], self.params["niter"], context.seed)
        return Partition(res.labels, self.params["k"], res.centroids, {"objective": res.objective})


class WrongShape(GoodOffline):
    name = "wrongshape"

    def fit(self, features, context):
        return Partition(np.zeros(len(features) - 1, dtype=np.int64), self.params["k"])


class Constant(GoodOffline):
    name = "constant"

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)


class GlobalRandom(GoodOffline):
    """Seeds from NumPy's global generator instead of context.seed."""

    name = "globalrandom"

    def fit(self, features, context):
        context.seed = int(np.random.randint(1 << 30))
        return super().fit(features, context)


class UnseededSubsample(GoodOffline):
    """Fits k-means on an unseeded random subset of up to 5,000 rows, then assigns every row to
    the nearest centre (seeded k-means: only the subset is drawn elsewhere)."""

    name = "unseededsubsample"

    def fit(self, features, context):
        x = np.asarray(features, dtype=np.float32)
        subset = np.random.default_rng().permutation(len(x))[:5000]
        centres = kmeans(x[subset], self.params["k"], self.params["niter"], context.seed).centroids
        labels = ((x[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        return Partition(labels.astype(np.int64), self.params["k"], centres)


class ShufflesIds(GoodOffline):
    """Groups the rows deterministically but numbers the clusters in an unseeded random order."""

    name = "shufflesids"

    def fit(self, features, context):
        part = super().fit(features, context)
        return Partition(np.random.default_rng().permutation(part.n_clusters)[part.labels], part.n_clusters)


class CentresInPlace(GoodOffline):
    """Centres the caller's array in place."""

    name = "centresinplace"

    def fit(self, features, context):
        features -= features.mean(axis=0)
        return super().fit(features, context)


class CentresKnowingly(CentresInPlace):
    """The same bug, declared: the kit skips the check."""

    name = "centresknowingly"
    conformance_skip = {"check_fit_does_not_modify_input": "centres in place to save memory"}


class Float32Only(GoodOffline):
    name = "float32only"

    def fit(self, features, context):
        if features.dtype != np.float32:
            raise TypeError(f"need float32, got {features.dtype}")
        return super().fit(features, context)


class ContiguousOnly(GoodOffline):
    name = "contiguousonly"

    def fit(self, features, context):
        if not features.flags.c_contiguous:
            raise ValueError("ndarray is not C-contiguous")
        return super().fit(features, context)


class NanToZero(GoodOffline):
    """Turns NaN into 0 and clusters garbage."""

    name = "nantozero"

    def fit(self, features, context):
        return super().fit(np.nan_to_num(features), context)


class SetInStats(GoodOffline):
    name = "setinstats"

    def fit(self, features, context):
        part = super().fit(features, context)
        return Partition(part.labels, part.n_clusters, stats={"used": set(part.labels.tolist())})


class Unpicklable(GoodOffline):
    name = "unpicklable"

    def __init__(self, **options):
        super().__init__(**options)
        self.hook = lambda x: x


class UsesKWithoutK(GoodOffline):
    name = "useskwithoutk"
    options = (Option("niter", int, 10, "iterations", min=1),)

    def fit(self, features, context):
        res = kmeans(features, 5, self.params["niter"], context.seed)
        return Partition(res.labels, 5)


class TargetsOffByOne(GoodOffline):
    """build_head's targets reach one past the head's outputs."""

    name = "targetsoffbyone"

    def build_head(self, partition, spec):
        head = super().build_head(partition, spec)
        return TrainingHead(head.module, head.targets + 1)


class _Constant(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(outputs))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


class HeadIgnoresFeatures(GoodOffline):
    """The head's output does not depend on the features: nothing trains the backbone."""

    name = "headignoresfeatures"

    def build_head(self, partition, spec):
        return TrainingHead(_Constant(partition.n_clusters), partition.labels)


class Counting(GoodOffline):
    """Per-epoch state (epochs fitted) that changes the labelling; saved and restored correctly."""

    name = "counting"

    def __init__(self, **options):
        super().__init__(**options)
        self.epochs = 0

    def fit(self, features, context):
        self.epochs += 1
        part = super().fit(features, context)
        return Partition((part.labels + self.epochs) % self.params["k"], part.n_clusters)

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = int(state["epochs"])


class StateNotRestored(Counting):
    name = "statenotrestored"

    def load_state_dict(self, state):
        pass


class StateNotLoadable(Counting):
    """Keeps a NumPy array in its state: torch.load(weights_only=True) refuses it."""

    name = "statenotloadable"

    def state_dict(self):
        return {"epochs": np.array([self.epochs])}


class SelaLike(GoodOffline):
    """Keeps a head across epochs (like SeLa) and labels from its scores; passes every check."""

    name = "selalike"
    wants_preprocessing = False

    def prepare(self, spec):
        self.head = linear_head(spec.feature_dim, self.params["k"])

    def fit(self, features, context):
        x = np.asarray(features, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InputError("features hold NaN or inf")
        with torch.no_grad():
            labels = self.head(torch.tensor(x)).argmax(1).numpy()
        return Partition(labels.astype(np.int64), self.params["k"])

    def build_head(self, partition, spec):
        return TrainingHead(self.head, partition.labels)

    def state_dict(self):
        return {"head": self.head.state_dict()}

    def load_state_dict(self, state):
        self.head.load_state_dict(state["head"])


class NoName(Clusterer):
    dcx_api = "3.0"
    options = (Option("k", int, 5, "clusters", min=1),)

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)


class InheritsName(GoodOffline):
    """Declares no name of its own: it would be 'goodoffline', its parent's."""


class Undocumented(GoodOffline):
    name = "undocumented"
    options = (Option("k", int, 5, min=1), Option("niter", int, 10, "iterations", min=1))


class BadDefault(GoodOffline):
    name = "baddefault"
    options = (Option("k", int, 0, "clusters", min=1), Option("niter", int, 10, "iterations", min=1))


class NoSuper(GoodOffline):
    name = "nosuper"

    def __init__(self, **options):
        self.params = {"k": options.get("k", 5), "niter": 10}


class NoApi(Clusterer):
    """Declares no dcx_api: the running dcx's would be silently assumed."""

    name = "noapi"

    def fit(self, features, context):
        return Partition(np.zeros(len(features), dtype=np.int64), 1)


class InheritsApi(DcxKMeans):
    """Subclasses a built-in and declares no dcx_api: dcx's own does not count for it."""

    name = "inheritsapi"


class OldMajor(GoodOffline):
    name = "oldmajor"
    dcx_api = "2.0"


# ----------------------------------------------------------------------------- online clusterers


class GoodOnline(OnlineClusterer):
    """Two views predict each other's sharpened prototype scores; passes every check. Its state is
    the number of steps taken, which sets the sharpening (a schedule)."""

    name = "goodonline"
    dcx_api = "3.0"
    options = (Option("k", int, 5, "prototypes", min=2), Option("temperature", float, 0.1, "softmax temperature", min=1e-3))

    def __init__(self, **options):
        super().__init__(**options)
        self.steps = 0
        self._usage = np.zeros(self.params["k"], dtype=np.int64)

    def build_head(self, spec):
        return nn.Linear(spec.feature_dim, self.params["k"], bias=False)

    def _targets(self, scores):
        sharpen = 0.5 + 0.5 * min(1.0, self.steps / 4)
        return torch.softmax(scores.detach() / (self.params["temperature"] * sharpen), dim=1)

    def loss(self, head, views, step):
        t = self.params["temperature"]
        scores = [head(nn.functional.normalize(v, dim=1)) for v in views]
        targets = [self._targets(s) for s in scores]
        loss = sum(-(targets[1 - i] * torch.log_softmax(scores[i] / t, dim=1)).sum(1).mean() for i in range(2)) / 2
        self._usage += np.bincount(targets[0].argmax(1).numpy(), minlength=self.params["k"])
        self.steps += 1
        return loss, {"loss": float(loss.detach())}

    def assign(self, head, features):
        return head(nn.functional.normalize(features, dim=1)).argmax(dim=1)

    def epoch_stats(self):
        used, self._usage = int((self._usage > 0).sum()), np.zeros(self.params["k"], dtype=np.int64)
        return {"prototypes_used": used}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])


class OnlineGlobalRandom(GoodOnline):
    name = "onlineglobalrandom"

    def _targets(self, scores):
        noise = torch.from_numpy(np.random.rand(*scores.shape).astype(np.float32))
        return super()._targets(scores + noise)


class LabelsPastK(GoodOnline):
    name = "labelspastk"

    def assign(self, head, features):
        return super().assign(head, features) + self.params["k"]


class FloatLabels(GoodOnline):
    name = "floatlabels"

    def assign(self, head, features):
        return super().assign(head, features).float()


class AssignInPlace(GoodOnline):
    name = "assigninplace"

    def assign(self, head, features):
        return super().assign(head, features.mul_(2))


class ZeroLoss(GoodOnline):
    """A loss that is zero whatever the features: gradients exist but are all zero."""

    name = "zeroloss"

    def loss(self, head, views, step):
        loss, stats = super().loss(head, views, step)
        return 0.0 * loss, stats


class DetachedLoss(GoodOnline):
    name = "detachedloss"

    def loss(self, head, views, step):
        return super().loss(head, [v.detach() for v in views], step)


class OnlineStateNotRestored(GoodOnline):
    name = "onlinestatenotrestored"

    def load_state_dict(self, state):
        pass


class TensorStats(GoodOnline):
    name = "tensorstats"

    def epoch_stats(self):
        return {"usage": torch.from_numpy(self._usage)}


class NegativeJitter(GoodOnline):
    """Asks for a negative photometric jitter on its views."""

    name = "negativejitter"

    def run_defaults(self, defaults):
        return dataclasses.replace(super().run_defaults(defaults), jitter=-1.0)


class ZeroPasses(GoodOnline):
    """Asks for no training passes at all."""

    name = "zeropasses"

    def run_defaults(self, defaults):
        return dataclasses.replace(super().run_defaults(defaults), passes=0)


class NanLoss(GoodOnline):
    name = "nanloss"

    def loss(self, head, views, step):
        loss, stats = super().loss(head, views, step)
        return loss * float("nan"), stats


# ----------------------------------------------------------------------------- backbones


class GoodBackbone(Backbone):
    """Two conv blocks and a global-average-pooled neck: passes every check."""

    name = "goodbackbone"
    dcx_api = "3.0"
    min_image_size = 8
    options = (Option("channels", int, 32, "channels of the first block at width 1", min=4),)

    def _width(self, width):
        return max(4, int(self.params["channels"] * width))

    def build(self, in_channels, image_size, width=1.0):
        c = self._width(width)
        blocks = [
            ("conv1", nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2))),
            ("conv2", nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU())),
        ]
        return BackboneNet(blocks, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 2 * c)


class NotAtMinSize(GoodBackbone):
    """Claims 8 px but its flattening neck is sized for 32-px inputs."""

    name = "notatminsize"

    def build(self, in_channels, image_size, width=1.0):
        net = super().build(in_channels, 32, width)
        c = 2 * self._width(width)
        net.neck = nn.Sequential(nn.Flatten(), nn.Linear(c * 16 * 16, c))
        return net


class ThreeChannelsOnly(GoodBackbone):
    name = "threechannelsonly"

    def build(self, in_channels, image_size, width=1.0):
        return super().build(3, image_size, width)


class SeedsItself(GoodBackbone):
    name = "seedsitself"

    def build(self, in_channels, image_size, width=1.0):
        torch.manual_seed(1234)
        return super().build(in_channels, image_size, width)


class DeadParameter(GoodBackbone):
    name = "deadparameter"

    def build(self, in_channels, image_size, width=1.0):
        net = super().build(in_channels, image_size, width)
        net.unused = nn.Linear(4, 4)
        return net


class WrongFeatureDim(GoodBackbone):
    name = "wrongfeaturedim"

    def build(self, in_channels, image_size, width=1.0):
        net = super().build(in_channels, image_size, width)
        net.feature_dim += 1
        return net


class NoBlocks(GoodBackbone):
    name = "noblocks"

    def build(self, in_channels, image_size, width=1.0):
        net = super().build(in_channels, image_size, width)
        return BackboneNet([], nn.Sequential(*net.blocks.values(), net.neck), net.feature_dim)


# ----------------------------------------------------------------------------- datasets


class _Images:
    def __init__(self, pixels):
        self.pixels = pixels

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return Image.fromarray(self.pixels[i], mode="L")


def bands(n, classes, seed):
    """(n, 16, 16) uint8 images: class c is a bright horizontal band at rows 4c..4c+3, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(60, 20, (n, 16, 16))
    for i, c in enumerate(y):
        x[i, 4 * c : 4 * c + 4] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


class GoodDataset(Dataset):
    """Generated band images, 3 classes, train and test splits: passes every check."""

    name = "gooddataset"
    dcx_api = "3.0"
    flip_invariant = True
    defaults = RunDefaults(image_size=16, k=9, epochs=1, batch_size=16, width=0.25)
    options = (Option("size", int, 60, "images per split", min=3),)

    def load(self, root=None, split="train", download=False):
        if split not in self.splits():
            raise InputError(f"{self.name} has no split {split!r}")
        pixels, labels = bands(self.params["size"], 3, seed={"train": 0, "test": 1}[split])
        return ImageSet(_Images(pixels), labels, ["top", "middle", "bottom"], channels=1)


class LabelsPastClasses(GoodDataset):
    name = "labelspastclasses"

    def load(self, root=None, split="train", download=False):
        images = super().load(root, split, download)
        return ImageSet(images.images, images.labels, images.classes[:2], images.channels)


class TestSplitMissing(GoodDataset):
    name = "testsplitmissing"

    def load(self, root=None, split="train", download=False):
        if split == "test":
            raise InputError("no test split on disk")
        return super().load(root, split, download)


class ShuffledLabels(GoodDataset):
    """Labels permuted once (seeded): the same every load, but not the images' labels."""

    name = "shuffledlabels"

    def load(self, root=None, split="train", download=False):
        images = super().load(root, split, download)
        labels = np.random.default_rng(0).permutation(images.labels)
        return ImageSet(images.images, labels, images.classes, images.channels)


class ReshuffledEachLoad(GoodDataset):
    name = "reshuffledeachload"

    def load(self, root=None, split="train", download=False):
        images = super().load(root, split, download)
        order = np.random.default_rng().permutation(len(images))
        return ImageSet(_Images(images.images.pixels[order]), images.labels[order], images.classes, images.channels)


class ChannelsLie(GoodDataset):
    name = "channelslie"

    def load(self, root=None, split="train", download=False):
        images = super().load(root, split, download)
        return ImageSet(images.images, images.labels, images.classes, channels=3)


class JitterPastOne(GoodDataset):
    """Declares a photometric jitter strength --jitter would refuse."""

    name = "jitterpastone"
    defaults = RunDefaults(image_size=16, k=9, epochs=1, batch_size=16, width=0.25, jitter=2.0)


class SobelAsText(GoodDataset):
    """Declares its Sobel setting as a string, which --sobel cannot take."""

    name = "sobelastext"
    defaults = RunDefaults(image_size=16, k=9, epochs=1, batch_size=16, width=0.25, sobel="off")  # type: ignore[arg-type]


GOOD = [GoodOffline, SelaLike, Counting, GoodOnline, GoodBackbone, GoodDataset]

#: (plugin, the check that must catch its bug)
BROKEN = [
    (WrongShape, "check_fit_returns_partition"),
    (Constant, "check_fit_recovers_planted_clusters"),
    (GlobalRandom, "check_fit_deterministic"),
    (UnseededSubsample, "check_fit_deterministic"),
    (UnseededSubsample, "check_state_dict_round_trip"),
    (ShufflesIds, "check_fit_deterministic"),
    (CentresInPlace, "check_fit_does_not_modify_input"),
    (CentresInPlace, "check_fit_accepts_read_only_input"),
    (Float32Only, "check_fit_accepts_float64"),
    (ContiguousOnly, "check_fit_accepts_non_contiguous"),
    (NanToZero, "check_fit_refuses_nan"),
    (SetInStats, "check_fit_stats_serialisable"),
    (Unpicklable, "check_pickles"),
    (UsesKWithoutK, "check_k_option"),
    (TargetsOffByOne, "check_build_head"),
    (HeadIgnoresFeatures, "check_build_head_gradients"),
    (StateNotRestored, "check_state_dict_round_trip"),
    (StateNotLoadable, "check_state_dict_round_trip"),
    (NoName, "check_name"),
    (InheritsName, "check_name"),
    (Undocumented, "check_options_documented"),
    (BadDefault, "check_options_declared"),
    (NoSuper, "check_unknown_option_rejected"),
    (NoApi, "check_api_version"),
    (InheritsApi, "check_api_version"),
    (OldMajor, "check_api_version"),
    (OnlineGlobalRandom, "check_online_deterministic"),
    (LabelsPastK, "check_online_assign"),
    (FloatLabels, "check_online_assign"),
    (AssignInPlace, "check_online_assign"),
    (ZeroLoss, "check_online_gradients"),
    (DetachedLoss, "check_online_gradients"),
    (OnlineStateNotRestored, "check_online_state_dict_round_trip"),
    (TensorStats, "check_online_stats_serialisable"),
    (NanLoss, "check_online_loss"),
    (NegativeJitter, "check_online_head"),
    (ZeroPasses, "check_online_head"),
    (NotAtMinSize, "check_backbone_min_image_size"),
    (ThreeChannelsOnly, "check_backbone_channels"),
    (ThreeChannelsOnly, "check_backbone_sobel"),
    (SeedsItself, "check_backbone_init_seeded"),
    (DeadParameter, "check_backbone_gradients"),
    (WrongFeatureDim, "check_backbone_build"),
    (NoBlocks, "check_backbone_blocks"),
    (LabelsPastClasses, "check_dataset_labels"),
    (TestSplitMissing, "check_dataset_splits_loadable"),
    (ShuffledLabels, "check_dataset_labels_match_images"),
    (JitterPastOne, "check_dataset_run_defaults"),
    (SobelAsText, "check_dataset_run_defaults"),
    (ReshuffledEachLoad, "check_dataset_load_reproducible"),
    (ChannelsLie, "check_dataset_images"),
]
