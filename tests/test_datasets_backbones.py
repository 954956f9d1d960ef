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




@pytest.mark.parametrize("layers", [["conv1", "conv5", "features"], ["conv2", "features"], ["features"]])
def test_pooled_layers_take_blocks_and_features_from_one_pass(layers):
    """Blocks and features in one forward (the neck of the last block) equal the features of a
    separate forward to the last bit; a plugin net with its own forward keeps the second pass."""
    from dcx.core.backbone_net import BackboneNet
    from dcx.training.layers import PooledLayers, layer_shapes, pooling_plan

    torch.manual_seed(0)
    net = build_network(AlexNet(fc_dim=64), 1, 32, 0.125, sobel=True).eval()
    x = torch.randn(4, 1, 32, 32)
    sides, _ = pooling_plan(layer_shapes(net, layers, 32, 1, torch.device("cpu")))
    with torch.no_grad():
        got = PooledLayers(net, layers, sides)(x)
        assert torch.equal(got[:, -64:], net(x))  # features last, bit for bit
        assert torch.equal(got, torch.cat([p.reshape(4, -1) for p in _pooled(net, layers, sides, x)], 1))

        class Doubled(BackboneNet):  # a plugin's forward that is not neck(blocks)
            def forward(self, x):
                return 2 * super().forward(x)

        net.net.__class__ = Doubled
        assert torch.equal(PooledLayers(net, layers, sides)(x)[:, -64:], 2 * got[:, -64:])


def _pooled(net, layers, sides, x):
    out = net.forward_blocks(x, [n for n in layers if n != "features"])
    for n in layers:
        y = net(x) if n == "features" else out[n]
        yield y if sides.get(n) is None else torch.nn.functional.adaptive_avg_pool2d(y, sides[n])
