"""Using what a run trained (issue 36): export loads without dcx, embed matches eval's extraction,
assign reproduces the run's assignments, the gallery page links only files that exist."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import dcx
from cli_checks import assert_one_line_error
from dcx.cli import app
from dcx.core.config import RunConfig
from results_helpers import digit_folder, folder_config, train

runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return digit_folder(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="module")
def alexnet_run(folder, tmp_path_factory) -> Path:
    """k-means + AlexNet (Sobel, as the paper) on the labelled digit folder."""
    return train(folder_config(folder), tmp_path_factory.mktemp("runs") / "alexnet")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    """A full-width ResNet-18 (torchvision's widths) on 32 digits, one short epoch."""
    cfg = dict(clusterer="kmeans", backbone="resnet18", dataset="digits", k=4, epochs=1, passes=1, batch_size=16,
               image_size=32, width=1.0, seed=0, probe=False, options={"digits": {"limit": 32}})
    return train(RunConfig(**cfg), tmp_path_factory.mktemp("runs") / "r18")


# A Python that has torch and torchvision and nothing of dcx: loads what `dcx export` wrote.
LOADER = textwrap.dedent("""
    import json, sys
    import torch, torchvision
    from torch import nn
    batch = torch.load(sys.argv[1])
    out = {}
    for path in sys.argv[2:]:
        meta = json.load(open(path.rsplit(".", 1)[0] + ".json"))
        if meta["format"] == "torchvision":
            r = meta["torchvision"]
            m = getattr(torchvision.models, r["constructor"])(weights=None)
            m.conv1 = nn.Conv2d(**r["conv1"])
            m.fc = nn.Identity()
            if r["maxpool"] == "Identity":
                m.maxpool = nn.Identity()
            m.load_state_dict(torch.load(path), strict=True)
            f = meta.get("sobel_filters")
            x = batch
            if f:
                gray = torch.tensor(f["gray"]).view(1, -1, 1, 1)
                x = nn.functional.conv2d(nn.functional.conv2d(x, gray), torch.tensor(f["kernels"])[:, None], padding=1)
            model = m.eval()
        elif meta["format"] == "torch-export":
            model, x = torch.export.load(path).module(), batch
        else:
            model, x = torch.jit.load(path).eval(), batch
        with torch.no_grad():
            out[path] = model(x).numpy().tolist()
    assert not [m for m in sys.modules if m == "dcx" or m.startswith("dcx.")], "dcx was imported"
    print(json.dumps(out))
""")


def _load_without_dcx(tmp_path: Path, batch, files: list[Path]) -> dict[str, np.ndarray]:
    import torch

    torch.save(batch, tmp_path / "batch.pt")
    (tmp_path / "loader.py").write_text(LOADER)
    done = subprocess.run([sys.executable, "loader.py", "batch.pt", *map(str, files)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return {k: np.asarray(v, np.float32) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def _batch(run: dcx.Run, n: int = 12):
    import torch

    images = run.images()
    return torch.stack([run.transform(images.images[i]) for i in range(n)]), [images.images[i] for i in range(n)]


def test_resnet18_exports_load_in_torchvision_strict_and_without_dcx(resnet_run, tmp_path):
    run = dcx.load(resnet_run, device="cpu")
    tv, tv_json = run.export("torchvision", tmp_path / "r18.pt")
    prog, _ = run.export("torch-export", tmp_path / "r18_layer3.pt2", layer="layer3")
    meta = json.loads(tv_json.read_text())
    assert meta["torchvision"]["constructor"] == "resnet18" and meta["image_size"] == 32 and meta["channels"] == 1
    batch, pils = _batch(run)
    got = _load_without_dcx(tmp_path, batch, [tv, prog])
    assert np.abs(got[str(tv)] - run.embed(pils)).max() <= 1e-5
    assert np.abs(got[str(prog)] - run.embed(pils, layer="layer3")).max() <= 1e-5


def test_alexnet_exports_a_program_and_says_why_not_torchvision(alexnet_run, tmp_path):
    run = dcx.load(alexnet_run, device="cpu")
    assert run.config.sobel  # the Sobel layer travels inside the program
    feats, _ = run.export("torch-export", tmp_path / "alex.pt2")
    conv3, _ = run.export("torchscript", tmp_path / "alex_conv3.pt", layer="conv3")
    batch, pils = _batch(run)
    got = _load_without_dcx(tmp_path, batch, [feats, conv3])
    assert np.abs(got[str(feats)] - run.embed(pils)).max() <= 1e-5
    assert np.abs(got[str(conv3)] - run.embed(pils, layer="conv3")).max() <= 1e-5
    result = runner.invoke(app, ["export", str(alexnet_run), "--out", str(tmp_path / "tv.pt")])
    assert_one_line_error(result, "BatchNorm", "--format torch-export")
    assert not (tmp_path / "tv.pt").exists() and not (tmp_path / "tv.json").exists()


def test_embed_rows_match_eval_extraction(alexnet_run, folder, tmp_path):
    from dcx.evaluation import extract_layers, load_run

    out = tmp_path / "emb"
    result = runner.invoke(app, ["embed", str(alexnet_run), "--data-root", str(folder), "--layer", "conv3",
                                 "--out", str(out), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    feats = np.load(out / "features.npy")
    rows = list(csv.DictReader(open(out / "files.csv")))
    loaded = load_run(alexnet_run, device="cpu")
    ref = extract_layers(loaded.learned, loaded.data, ["conv3"], 32, loaded.setup.device)["conv3"]
    assert feats.shape == ref.shape == (300, ref.shape[1])
    assert np.abs(feats - ref).max() <= 1e-5
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))
    assert [r["path"] for r in rows] == files  # imagefolder's sorted order, row for row
    assert [r["label"] for r in rows] == [p.split("/")[0] for p in files]
    half = tmp_path / "half"
    assert runner.invoke(app, ["embed", str(alexnet_run), "--out", str(half), "--half", "-q"]).exit_code == 0
    assert np.load(half / "features.npy").dtype == np.float16
    plugin = tmp_path / "plugin"  # a dataset plugin instead of a folder: rows by index, labels by class
    result = runner.invoke(app, ["embed", str(alexnet_run), "--dataset", "digits", "--opt", "digits.limit=40",
                                 "--out", str(plugin), "-q"])
    assert result.exit_code == 0, result.output
    assert np.load(plugin / "features.npy").shape == (40, 64)
    assert (plugin / "files.csv").read_text().splitlines()[:2] == ["row,index,label", "0,0,0"]
    # dcx cluster works on what embed wrote
    clustered = runner.invoke(app, ["cluster", str(out / "features.npy"), "--k", "5", "--out", str(tmp_path / "c.npy")])
    assert clustered.exit_code == 0, clustered.output
    assert np.load(tmp_path / "c.npy").shape == (300,)


def test_unreadable_images_are_skipped_and_counted(alexnet_run, tmp_path):
    small = digit_folder(tmp_path / "small", n=20)
    (small / "3" / "broken.png").write_bytes(b"\x89PNG not really an image")
    out = tmp_path / "emb"
    result = runner.invoke(app, ["embed", str(alexnet_run), "--data-root", str(small), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 unreadable image(s) skipped" in result.output
    assert np.load(out / "features.npy").shape[0] == 20
    assert json.loads((out / "embed.json").read_text())["skipped_images"] == 1
    assert "3/broken.png" not in (out / "files.csv").read_text()


def test_run_writes_assignments_csv_and_assign_reproduces_them(alexnet_run, folder, tmp_path):
    table = list(csv.DictReader(open(alexnet_run / "assignments.csv")))
    final = np.load(alexnet_run / "assignments.npy")
    assert [int(r["cluster"]) for r in table] == final.tolist()
    assert all(float(r["distance"]) >= 0 for r in table) and "cluster_1" in table[0]  # one column per head
    out = tmp_path / "assign.csv"
    result = runner.invoke(app, ["assign", str(alexnet_run), "--data-root", str(folder), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    got = list(csv.DictReader(open(out)))
    assert [r["path"] for r in got] == [r["path"] for r in table]
    same = np.mean([int(a["cluster"]) == int(b["cluster"]) for a, b in zip(got, table)])
    assert same >= 0.99
    dist = np.array([[float(a["distance"]), float(b["distance"])] for a, b in zip(got, table)])
    assert np.allclose(dist[:, 0], dist[:, 1], atol=1e-4)


def test_online_clusterer_assigns_through_its_prototypes(folder, tmp_path):
    run = train(folder_config(folder, "swav", k=10, epochs=1), tmp_path / "swav")
    assert not (run / "clustering.npz").exists()
    got = dcx.load(run, device="cpu").assign()
    assert np.mean(got.labels == np.load(run / "assignments.npy")[got.index]) >= 0.99
    table = list(csv.DictReader(open(run / "assignments.csv")))
    assert [int(r["cluster"]) for r in table] == np.load(run / "assignments.npy").tolist()
    assert all(r["distance"] == "" for r in table)  # an online clusterer's assign gives labels only
    page = dcx.load(run, device="cpu").gallery(clusters=2, per_cluster=3)  # ranked by distance to the cluster mean
    assert len(page.clusters) == 2 and all(len(v.nearest) == 3 for v in page.clusters)


def test_gallery_links_only_existing_files_and_shows_the_clusters_asked(alexnet_run, tmp_path):
    out = tmp_path / "gallery"
    result = runner.invoke(app, ["gallery", str(alexnet_run), "--clusters", "5", "--per-cluster", "4",
                                 "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    links = re.findall(r"(?:src|href)='([^']+)'", page)
    assert links and all((out / link).is_file() for link in links)
    assert "contact_sheet.png" in links and "map.png" in links
    assert len(re.findall(r"<section class='cluster'", page)) == 5
    assert page.count("majority") >= 5  # labelled folder: majority label and purity
    from PIL import Image

    assert Image.open(out / "contact_sheet.png").size[1] >= 5 * 64
    again = runner.invoke(app, ["gallery", str(alexnet_run), "--out", str(out)])
    assert_one_line_error(again, "already exists")


def test_bad_inputs_are_one_line_and_leave_nothing(alexnet_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    cases = [
        (["embed", str(alexnet_run), "--data-root", str(empty), "--out", str(out)], "no images"),
        (["assign", str(alexnet_run), "--data-root", str(empty), "--out", str(out)], "no images"),
        (["embed", str(alexnet_run), "--layer", "conv9", "--out", str(out)], "unknown layer"),
        (["export", str(alexnet_run), "--format", "torch-export", "--layer", "conv9", "--out", str(out)], "unknown layer"),
        (["embed", str(tmp_path), "--out", str(out)], "config.toml"),
        (["gallery", str(empty)], "config.toml"),
    ]
    for args, words in cases:
        assert_one_line_error(runner.invoke(app, args), words)
        assert not out.exists()
    no_checkpoint = tmp_path / "fresh"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.toml").write_text((alexnet_run / "config.toml").read_text())
    for cmd in ("embed", "assign", "export", "gallery"):
        assert_one_line_error(runner.invoke(app, [cmd, str(no_checkpoint), "--out", str(out)]), "checkpoint")
    taken = tmp_path / "taken.csv"
    taken.write_text("keep me")
    assert_one_line_error(runner.invoke(app, ["assign", str(alexnet_run), "--out", str(taken)]), "already exists")
    assert taken.read_text() == "keep me"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_vgg16_at_full_width_maps_onto_torchvision_vgg16_bn():
    """The VGG recipe the docs give (vgg16_bn, classifier[:4]) loads strict=True and computes dcx's features."""
    import torch

    from dcx.backbones.vgg import VGG16
    from dcx.training.network import build_network
    from dcx.results.export import build_torchvision, torchvision_state

    torch.manual_seed(0)
    net = build_network(VGG16(dropout=0.0), 3, 64, 1.0, sobel=False).eval()
    state, recipe = torchvision_state(net, "vgg16", 64)
    tv = build_torchvision(recipe)
    tv.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (tv.eval()(x) - net(x)).abs().max() <= 1e-4


def test_cli_commands_are_thin_wrappers_over_the_api():
    """No model loading or extraction in dcx/cli/: the commands call dcx.api (issue 36)."""
    cli = Path(dcx.__file__).parent / "cli"
    forbidden = re.compile(r"load_state_dict|torch\.load|load_network|load_run|stream_rows|extract\(|import torch")
    hits = [f"{p.name}: {line.strip()}" for p in cli.glob("*.py") for line in p.read_text().splitlines()
            if forbidden.search(line)]
    assert hits == []
    for name in ("export", "embed", "assign", "gallery"):
        assert "from dcx.api import load" in (cli / f"{name}.py").read_text()


def test_import_dcx_and_its_api_names_import_no_torch():
    code = ("import sys, dcx; names = (dcx.train, dcx.load, dcx.evaluate, dcx.Run); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(n.__name__ for n in names))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['Run', 'evaluate', 'load', 'train']"
