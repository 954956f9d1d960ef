"""imagefolder: index without decoding, read every mode as a viewer shows it, unreadable files
raise UnreadableImage on access, defaults picked from the data."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image, ImageFile

from dcx.core.config import RunConfig
from dcx.core.errors import InputError, UnreadableImage
from dcx.training.setup import setup
from dcx.datasets import folder
from dcx.datasets.characters import write_folder
from dcx.datasets.folder import ImageFolder, image_size_for, read_image, scaled_defaults, width_for
from dcx.testing import check_dataset


def _save(path, array, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kw)
    return path


def _colour(path, seed=0, size=(16, 16)):
    rng = np.random.default_rng(seed)
    return _save(path, rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_load_decodes_nothing_and_a_corrupt_file_fails_only_when_read(tmp_path, monkeypatch):
    for i in range(250):
        _save(tmp_path / f"c{i % 2}" / f"{i:03d}.png", np.full((10, 12), i, np.uint8))
    (tmp_path / "c1" / "broken.png").write_bytes(b"\x89PNG not really an image")
    opened, decoded = [], []
    real_open, real_load = Image.open, ImageFile.ImageFile.load
    monkeypatch.setattr(folder.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1) or real_load(self))
    images = ImageFolder().load(tmp_path)
    assert len(images) == 251 and images.skipped == 0
    assert 0 < len(opened) <= folder.PROBE_FILES and not decoded  # headers of a sample only
    assert images.classes == ["c0", "c1"] and images.labels.tolist().count(1) == 126
    broken = [i for i, p in enumerate(images.images.paths) if p.name == "broken.png"][0]
    with pytest.raises(UnreadableImage) as err:
        images.images[broken]
    assert err.value.path == tmp_path / "c1" / "broken.png" and err.value.reason
    assert images.images[0].size == (12, 10)


def test_sixteen_bit_images_keep_their_contrast(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    _save(tmp_path / "deep" / "ramp.png", ramp)
    _save(tmp_path / "deep" / "low.png", (ramp // 16).astype(np.uint16))  # 12-bit content
    _save(tmp_path / "plain" / "ramp.png", (ramp // 257).astype(np.uint8))
    images = ImageFolder().load(tmp_path)
    assert images.channels == 1
    deep = np.asarray(images.images[1], dtype=np.float64)  # deep/ramp.png
    plain = np.asarray(images.images[2], dtype=np.float64)
    assert deep.min() == 0 and deep.max() == 255 and deep.std() > 70
    assert np.abs(deep - plain).max() <= 1  # the same picture as its 8-bit twin
    assert np.all(np.diff(deep.ravel()) >= 0)  # still a ramp: scaled, not clipped or wrapped
    low = np.asarray(images.images[0], dtype=np.float64)
    assert low.max() == 16  # scaled by the type's range (documented), not stretched
    # 32-bit "I" with 16-bit values and float images in 0..1.
    as_i = Image.fromarray(ramp.astype(np.int32), mode="I")
    assert np.asarray(folder.to_8bit(as_i, "L")).max() == 255
    as_f = Image.fromarray((ramp / 65535).astype(np.float32), mode="F")
    assert np.abs(np.asarray(folder.to_8bit(as_f, "L"), dtype=float) - plain).max() <= 1


def test_other_modes_are_converted_as_a_viewer_shows_them(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom half transparent
    red_top = np.asarray(read_image(_save(tmp_path / "a.png", rgba, "RGBA"), "RGB"))
    assert red_top[0, 0].tolist() == [255, 0, 0] and red_top[7, 0].tolist() == [255, 255, 255]
    la = np.asarray(read_image(_save(tmp_path / "la.png", np.dstack([np.full((4, 4), 30, np.uint8)] * 2), "LA"), "L"))
    assert la.max() > 200  # alpha 30/255 on white: mostly white
    one = Image.new("1", (5, 5), 1)
    one.save(tmp_path / "one.png")
    assert np.asarray(read_image(tmp_path / "one.png", "L")).min() == 255
    Image.new("RGB", (6, 6), (0, 0, 255)).convert("P").save(tmp_path / "p.gif")
    assert read_image(tmp_path / "p.gif", "RGB").getpixel((0, 0)) == (0, 0, 255)
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = read_image(tmp_path / "cmyk.jpg", "RGB").getpixel((2, 2))
    assert r > 200 and g < 60 and b < 60
    assert read_image(tmp_path / "cmyk.jpg", "L").mode == "L"


def test_truncated_and_over_limit_images_raise_unreadable_on_access(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _colour(tmp_path / "a" / "big.png", size=(100, 100))
    _colour(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    images = ImageFolder().load(tmp_path)
    assert len(images) == 3 and images.skipped == 1  # the empty file is left out when indexing
    names = [p.name for p in images.images.paths]
    with pytest.raises(UnreadableImage, match="truncated"):
        images.images[names.index("cut.jpg")]
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # nothing global changed
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # 100 x 100 = 10,000: the error zone
    with pytest.raises(UnreadableImage, match="limit"):
        images.images[names.index("big.png")]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8000)  # the warning zone is refused too
    with pytest.raises(UnreadableImage, match="limit"):
        images.images[names.index("big.png")]
    assert images.images[names.index("ok.png")].mode == "RGB"
    assert pickle.loads(pickle.dumps(images.images)).paths == images.images.paths  # DataLoader workers


def test_channels_are_picked_from_the_data_unless_forced(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    _save(tmp_path / "gray" / "x" / "a.png", gray)
    _save(tmp_path / "gray" / "x" / "b.jpg", np.dstack([gray] * 3))  # gray picture stored as RGB
    _save(tmp_path / "gray" / "y" / "c.png", gray.astype(np.uint16) * 257)
    assert ImageFolder().load(tmp_path / "gray").channels == 1
    assert ImageFolder(grayscale=False).load(tmp_path / "gray").channels == 3
    _colour(tmp_path / "mixed" / "x" / "c.png")
    _save(tmp_path / "mixed" / "y" / "a.png", gray)
    mixed = ImageFolder().load(tmp_path / "mixed")
    assert mixed.channels == 3 and mixed.images[1].mode == "RGB"
    forced = ImageFolder(grayscale=True).load(tmp_path / "mixed")
    assert forced.channels == 1 and forced.images[0].mode == "L"
    (tmp_path / "gif").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).convert("P").save(tmp_path / "gif" / "red.gif")
    Image.fromarray(gray).convert("P").save(tmp_path / "gif" / "gray.gif")
    assert ImageFolder().load(tmp_path / "gif").channels == 3
    (tmp_path / "gif" / "red.gif").unlink()
    assert ImageFolder().load(tmp_path / "gif").channels == 1


def test_hidden_files_are_ignored_and_flat_folders_are_unlabelled(tmp_path):
    _colour(tmp_path / "a.png")
    _colour(tmp_path / "b.png", seed=1)
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    _colour(tmp_path / ".thumbs" / "c.png")
    images = ImageFolder().load(tmp_path)
    assert [p.name for p in images.images.paths] == ["a.png", "b.png"] and images.labels is None
    with pytest.raises(InputError, match="no images"):
        ImageFolder().load(_empty(tmp_path))


def _empty(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no images here")
    return tmp_path / "nothing"


def test_defaults_from_a_character_folder_and_from_photos(tmp_path):
    write_folder(tmp_path / "chars", per_class=4, size=28)
    chars = check_dataset(ImageFolder, tmp_path / "chars")
    d = ImageFolder().run_defaults(chars)
    assert chars.channels == 1 and len(chars) == 40
    assert (d.image_size, d.width, d.flip) == (32, 0.25, False)
    for i in range(3):
        _colour(tmp_path / "photos" / "x" / f"{i}.png", seed=i, size=(100, 130))
    photos = ImageFolder().load(tmp_path / "photos")
    d = ImageFolder().run_defaults(photos)
    assert photos.channels == 3 and (d.image_size, d.width, d.flip) == (96, 0.5, None)


def test_a_character_folder_trains_with_no_flags(tmp_path):
    write_folder(tmp_path / "chars", per_class=6, size=28)
    s = setup(RunConfig(dataset="imagefolder", data_root=str(tmp_path / "chars")))
    assert s.flip is False and s.images.channels == 1
    assert (s.config.image_size, s.config.width) == (32, 0.25) and s.config.k <= len(s.images) // 5


def test_size_width_and_budget_rules():
    assert [image_size_for(s) for s in (8, 28, 50, 64, 96, 100, 500)] == [32, 32, 48, 64, 96, 96, 224]
    assert [width_for(s) for s in (32, 48, 64, 96, 128)] == [0.25, 0.25, 0.5, 0.5, 1.0]
    small = scaled_defaults(1797, 32)
    assert (small.epochs, small.passes, small.batch_size) == (10, 3, 64) and 80 <= small.k <= 100
    big = scaled_defaults(20_000, 32)
    assert big.epochs * big.passes * 20_000 <= 150_000 and big.epochs >= 3 and big.k == 500
    huge = scaled_defaults(1_281_167, 224)
    assert huge.k <= 10_000 and huge.width == 1.0 and huge.batch_size == 256
    tiny = scaled_defaults(30, 32)
    assert tiny.k == 6  # at most N / 5


def test_a_folder_with_16_bit_truncated_and_over_limit_images_trains(tmp_path, monkeypatch):
    """Issue 11: the 16-bit class keeps its contrast; the truncated JPEG and the over-limit image
    are skipped and counted, and the run goes on."""
    import json

    from typer.testing import CliRunner

    from dcx.cli import app

    rng = np.random.default_rng(0)
    for i in range(24):
        base = rng.integers(0, 256, (24, 24)).astype(np.uint16)
        _save(tmp_path / "data" / "deep" / f"{i:02d}.png", (base * 257).astype(np.uint16))  # 16-bit
        _save(tmp_path / "data" / "plain" / f"{i:02d}.png", np.full((24, 24), 40 + i, np.uint8))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "data" / "plain" / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _save(tmp_path / "data" / "deep" / "huge.png", rng.integers(0, 256, (120, 120), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 120 x 120 is over the limit, 24 x 24 is not

    images = ImageFolder().load(tmp_path / "data")
    deep = [np.asarray(images.images[i], dtype=np.float64) for i, p in enumerate(images.images.paths)
            if p.parent.name == "deep" and p.name != "huge.png"]
    assert np.mean([d.std() for d in deep]) > 50 and max(d.max() for d in deep) > 200  # contrast, not white

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "run", "--dataset", "imagefolder", "--data-root", str(tmp_path / "data"), "--k", "4", "--epochs", "2",
        "--passes", "1", "--batch-size", "16", "--width", "0.125", "--opt", "alexnet.fc_dim=32", "--no-probe",
        "--quiet", "--no-report", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 50 and summary["skipped_images"] == 2
    assert np.isfinite(summary["final_loss"])
