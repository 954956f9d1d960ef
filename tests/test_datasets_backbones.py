import numpy as np
import pytest
import torch
from PIL import Image

from dcx.backbones.alexnet import AlexNet
from dcx.core.errors import InputError, UnreadableImage
from dcx.training.network import Sobel, build_network
from dcx.datasets.folder import ImageFolder
from dcx.datasets.torchvision_sets import MNIST


def _png(path, value, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def test_imagefolder_labels_from_subfolders_and_corrupt_files_fail_when_read(tmp_path):
    _png(tmp_path / "cats" / "a.png", 10)
    _png(tmp_path / "cats" / "b.png", 20)
    _png(tmp_path / "dogs" / "c.png", 30)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really an image")
    images = ImageFolder(grayscale=False).load(tmp_path)  # nothing is decoded at load
    assert len(images) == 4 and images.skipped == 0
    assert images.labels.tolist() == [0, 0, 1, 1] and images.classes == ["cats", "dogs"]
    assert images.images[3].mode == "RGB" and images.channels == 3
    with pytest.raises(UnreadableImage, match="broken.png"):
        images.images[2]


def test_imagefolder_flat_folder_is_unlabelled_and_missing_root_is_an_error(tmp_path):
    _png(tmp_path / "x.png", 1)
    _png(tmp_path / "y.png", 2)
    images = ImageFolder(grayscale=True).load(tmp_path)
    assert images.labels is None and images.channels == 1
    with pytest.raises(InputError, match="is not a folder"):
        ImageFolder().load(tmp_path / "nope")
    with pytest.raises(InputError, match="needs --data-root"):
        ImageFolder().load(None)


def test_torchvision_set_never_downloads_unless_asked(tmp_path):
    with pytest.raises(InputError, match="--download"):
        MNIST().load(tmp_path, "train", download=False)


def test_sobel_sees_edges_not_intensity():
    flat = torch.full((1, 3, 8, 8), 0.7)
    edges = Sobel(3)(flat)
    assert edges.shape == (1, 2, 8, 8)
    assert torch.allclose(edges[..., 1:-1, 1:-1], torch.zeros(1, 2, 6, 6), atol=1e-6)
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    assert Sobel(1)(step)[0, 0].abs().sum() > 0 and Sobel(1)(step)[0, 1, 1:-1].abs().sum() == 0
    assert not list(Sobel(3).parameters())


def test_alexnet_features_are_fc7_before_relu_and_sobel_layer_is_used():
    torch.manual_seed(0)
    net = build_network(AlexNet(fc_dim=64), 1, 32, 0.125, sobel=True).eval()
    x = torch.randn(4, 1, 32, 32)
    feats = net(x)
    assert feats.shape == (4, 64) and (feats < 0).any()  # no ReLU on the clustered features
    assert net.net.relu_head and isinstance(net.input, Sobel)
    assert net.net.blocks["conv1"][0].in_channels == 2  # the backbone sees two edge channels


@pytest.mark.parametrize("augment", ["crop", "affine", "elastic"])
def test_training_augmentations_keep_size_and_vary(augment):
    import torch
    from PIL import Image

    from dcx.data import train_transform

    t = train_transform(32, 1, flip=False, min_scale=0.5, augment=augment)
    img = Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8), mode="L")
    torch.manual_seed(0)
    a, b = t(img), t(img)
    assert a.shape == b.shape == (1, 32, 32) and not torch.equal(a, b)


def test_elastic_augmentation_draws_from_the_documented_ranges():
    from dcx.data import train_transform

    steps = train_transform(32, 1, flip=False, min_scale=0.5, augment="elastic").transforms
    affine = next(s for s in steps if type(s).__name__ == "RandomAffine")
    elastic = next(s for s in steps if type(s).__name__ == "RandomApply").transforms[0]
    assert (affine.degrees[1], affine.translate[0], affine.shear[1], float(elastic.alpha[0])) == (12.0, 0.08, 8.0, 32.0)


def test_jitter_changes_brightness_and_contrast_and_colour_only_when_asked():
    """--jitter 0 is the reference pipeline; above 0 a flat crop's intensity moves (brightness /
    contrast), colour images also change hue, and grayscale ones never get colour ops."""
    from dcx.data import train_transform

    def kinds(t):
        return [type(s).__name__ if type(s).__name__ != "RandomApply" else type(s.transforms[0]).__name__
                for s in t.transforms]

    assert "ColorJitter" not in kinds(train_transform(32, 3, flip=False, min_scale=1.0))
    gray = train_transform(32, 1, flip=False, min_scale=1.0, augment="crop", jitter=0.8)
    jitter = next(s.transforms[0] for s in gray.transforms
                  if type(s).__name__ == "RandomApply" and type(s.transforms[0]).__name__ == "ColorJitter")
    assert jitter.saturation is None and jitter.hue is None and jitter.brightness == pytest.approx((0.2, 1.8))
    assert "GaussianBlur" in kinds(gray)
    colour = train_transform(32, 3, flip=False, min_scale=1.0, augment="crop", jitter=0.8)
    img = Image.new("RGB", (32, 32), (200, 60, 60))
    torch.manual_seed(0)
    means = torch.stack([colour(img).mean(dim=(1, 2)) for _ in range(20)])
    assert means.std(dim=0).min() > 0.02  # every channel's level varies between draws
    reference = train_transform(32, 3, flip=False, min_scale=1.0, augment="crop")
    assert torch.stack([reference(img).mean(dim=(1, 2)) for _ in range(5)]).std(dim=0).max() < 1e-6
