"""The settings of one run: one typed, validated schema (pydantic) shared by ``dcx run``, ``--config``
files, ``dcx compare`` and the engine; its TOML form (``config.toml``) reproduces a run.

Every field carries its command-line flag and help text, so the CLI declares the run options
once, from here (``dcx.cli.run_options``), and a bad value anywhere is the same one-line error.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dcx.core.errors import InputError

#: Settings that a run directory written before they existed lacks, with the value that run trained
#: at, where today's default would resolve to something else (the dataset's --jitter).
RAN_AT_WHEN_ABSENT: dict[str, Any] = {"jitter": 0.0, "cluster_views": 1}
#: The same for plugin options: a run that used the plugin but whose recorded options lack one ran
#: at this value (kmeans.heads: one clustering per round before the option came with a default of 3;
#: kmeans.merged_heads: none before it came with a default of 1;
#: swav.jitter_scale: its views took the dataset's jitter as it was; swav.passes_scale: it trained
#: the one-view passes times its views; dcv2.merged_heads: the
#: reference's prototype sets only, before it came with a default of 1, now 2; a run that records
#: merged_heads records its merge_scale too).
OPTION_RAN_AT_WHEN_ABSENT: dict[str, dict[str, Any]] = {"kmeans": {"heads": 1, "merged_heads": 0},
                                                       "swav": {"jitter_scale": 1.0, "passes_scale": 1.0},
                                                       "dcv2": {"merged_heads": 0}}


def options_ran_at(options: dict[str, dict[str, Any]], plugins: set[str]) -> dict[str, dict[str, Any]]:
    """``options`` of a run that used ``plugins``, with OPTION_RAN_AT_WHEN_ABSENT's values where absent."""
    out = {p: dict(o) for p, o in options.items()}
    for plugin, values in OPTION_RAN_AT_WHEN_ABSENT.items():
        if plugin in plugins:
            for key, value in values.items():
                out.setdefault(plugin, {}).setdefault(key, value)
    return out


def setting(default: Any, help: str, *, flag: str | None = None, short: str | None = None, cli: str = "train",
            **constraints: Any) -> Any:
    """A field with its CLI metadata. ``cli``: 'train' (offered by run and compare), 'run' (run
    only), or 'none' (not a flag)."""
    return Field(default, description=help, json_schema_extra={"flag": flag, "short": short, "cli": cli},
                 **constraints)


class RunConfig(BaseModel):
    """Everything a run depends on. ``None`` means "the dataset's or plugin's default"."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    clusterer: str = setting("kmeans", "clusterer plugin (dcx list)", short="-c", cli="run", min_length=1)
    backbone: str = setting("alexnet", "backbone plugin (dcx list)", short="-b", min_length=1)
    dataset: str = setting("digits", "dataset plugin (dcx list)", short="-d", min_length=1)
    data_root: str | None = setting(None, "folder of the dataset")
    download: bool = setting(False, "allow torchvision datasets to download")
    k: int | None = setting(None, "number of clusters (default: the dataset's; paper: ~10x the classes)", ge=1)
    epochs: int | None = setting(None, "clustering rounds (default: the dataset's)", short="-e", ge=1)
    passes: int | None = setting(
        None, "backbone passes over the data per clustering round (online clusterers: divided by their views "
        "per image; default: the dataset's, times those views and the clusterer's passes_scale for online "
        "clusterers)", ge=1)
    batch_size: int | None = setting(None, "images per optimiser step (default: the dataset's)", ge=1)
    lr: float = setting(0.05, "SGD learning rate (reference: 0.05)", gt=0)
    lr_schedule: Literal["cosine", "cosine-restarts", "constant"] = setting(
        "cosine", "backbone learning-rate schedule: cosine (decays to 0 over the run), cosine-restarts (a cosine to "
        "0 within every clustering round, its peak following the run's cosine) or constant (the reference)")
    warmup_epochs: float = setting(0.0, "linear learning-rate warm-up from 0 over this many epochs (SwAV: 10)", ge=0)
    momentum: float = setting(0.9, "SGD momentum (reference: 0.9)", ge=0, lt=1)
    weight_decay: float = setting(1e-5, "SGD weight decay (reference: 1e-5)", ge=0)
    image_size: int | None = setting(None, "input side in pixels, 8 to 1024 (default: the dataset's)", ge=8, le=1024)
    width: float | None = setting(None, "channel multiplier of the backbone (1.0 = paper)", gt=0, le=16)
    sobel: bool | None = setting(None, "fixed Sobel input layer (default: the dataset's, else the backbone's)")
    flip: bool | None = setting(None, "random horizontal flips in training (default: the dataset's; off for "
                                      "digits and characters)")
    augment: Literal["crop", "affine", "elastic"] | None = setting(
        None, "training augmentation: crop (random resized crops, the reference), affine (+ small rotations, "
        "shifts, zoom, shear), elastic (+ elastic warps) (default: the dataset's, else elastic up to 64 px and crop above)")
    warp: float = setting(1.0, "strength of the affine and elastic warps (1 = rotations up to 12 degrees, "
                               "shifts 8%, zoom 10%, shear 8 degrees, elastic alpha = image side)", ge=0, le=4)
    jitter: float | None = setting(
        None, "photometric jitter: brightness and contrast by up to this fraction (colour images: saturation too, "
        "hue by a quarter of it) with p 0.8, and Gaussian blur with p 0.5 (SwAV's colour distortion is 0.8) "
        "(default: the dataset's: 0.4 for digits and characters, whose class never depends on intensity; else 0, "
        "the reference; swav's views take twice it: swav.jitter_scale)", ge=0, le=1)
    crop_scale: float | None = setting(
        None, "smallest crop area of training crops (default: 0.08 above 64 px, 0.5 at or below)", gt=0, le=1)
    cluster_layer: str = setting(
        "features", "what offline clusterers cluster: features (the network's output, the paper's fc7) or a block "
        "(conv5, ...; average-pooled as dcx eval pools it)")
    cluster_views: int | None = setting(
        None, "offline clusterers cluster each image's features averaged over the plain image and "
        "cluster_views - 1 training-augmented views of it (default 1, the paper's plain image; MixMatch "
        "averages K = 2 augmentations' predictions into its guessed labels)", ge=1, le=16)
    label_smoothing: float = setting(
        0.0, "label smoothing of the offline clusterers' cross-entropy against their pseudo-labels (0 = the "
        "paper's hard labels; 0.1 recommended for k-means and PIC, docs/recipes.md)", ge=0, lt=1)
    head_lr: float | None = setting(
        None, "learning rate of the offline clusterers' classifier head, a fresh one each round (default: --lr, as "
        "the reference's optimizer_tl)", gt=0)
    views: int | None = setting(
        None, "crops of each image per training step, all trained towards its label (offline clusterers: "
        "default 1, the paper's; DeepCluster-v2 trains on 2; online clusterers: their crops, set by their "
        "options); --passes counts views, as for online clusterers", ge=1, le=16)
    pca_dim: int = setting(256, "PCA dimensions before offline clustering (paper: 256)", ge=1)
    whiten: bool = setting(True, "whiten the PCA components before offline clustering (paper: yes)")
    seed: int = setting(0, "seed of every random choice; same seed on CPU = identical run", ge=0, lt=2**31)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto (distributed: each rank takes cuda:LOCAL_RANK)",
                          cli="run")
    workers: int | None = setting(None, "data-loading processes per rank (default: up to 8 of this machine's "
                                        "cores on CUDA, 0 on CPU where the cores compute)", ge=0, cli="run")
    precision: Literal["fp32", "bf16", "fp16"] = setting(
        "fp32", "autocast precision of training and extraction (fp16 uses a gradient scaler)", cli="run")
    sync_bn: bool = setting(False, "SyncBatchNorm across ranks in distributed CUDA runs", cli="run")
    feature_memory_gb: float = setting(
        4.0, "RAM the extracted features may take; above it they stream to a memory-mapped file in the run "
        "directory", gt=0, cli="run")
    probe: bool = setting(True, "k-means(#classes) NMI of the features each epoch, when labels exist")
    save_every_epoch: bool = setting(False, "keep each epoch's assignments", cli="run")
    out: str | None = setting(None, "run directory", cli="none")
    options: dict[str, dict[str, Any]] = setting({}, "plugin options", cli="none")
    plugins: dict[str, dict[str, str]] = setting(
        {}, "provider of each plugin the run used: kind -> {name, package, version} (set by setup)", cli="none")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be cpu, cuda, cuda:N or auto")

    # ------------------------------------------------------------------ TOML and dicts

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.model_dump().items() if v is not None and k != "options"}
        data["options"] = {p: dict(o) for p, o in self.options.items() if o}
        return data

    def to_toml(self) -> bytes:
        return tomli_w.dumps(self.to_dict()).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config", strict: bool = False) -> "RunConfig":
        """Validate ``data``; every problem is an InputError of one line naming ``source``. ``strict``
        (typed sources such as TOML) refuses a bool for a number and a number for a bool."""
        try:
            return cls.model_validate(data, strict=strict)
        except ValidationError as exc:
            raise InputError(describe_error(exc, source)) from None

    @classmethod
    def load(cls, path: Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist: pass a TOML file such as runs/<run>/config.toml")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"config file {path} is not valid TOML ({exc}); fix or regenerate it") from None
        return cls.from_dict(data, f"config file {path}", strict=True)

    @classmethod
    def load_run(cls, path: Path) -> "RunConfig":
        """A run directory's config.toml: a setting it lacks was added to dcx after the run was
        written, and takes the value the run trained at (``RAN_AT_WHEN_ABSENT``, else the default)."""
        cfg = cls.load(path)
        absent = {k: v for k, v in RAN_AT_WHEN_ABSENT.items() if k not in cfg.model_fields_set}
        absent["options"] = options_ran_at(cfg.options, cfg.plugin_names())
        return cfg.model_copy(update=absent)

    def plugin_names(self) -> set[str]:
        """The names of the run's built-in plugins (clusterer, backbone, dataset): those dcx provided
        when the run recorded its providers, else those not qualified by another package."""
        names = set()
        for kind in ("clusterer", "backbone", "dataset"):
            given = getattr(self, kind)
            provider = self.plugins.get(kind, {}).get("package")
            if provider is None:
                provider = given.split(":", 1)[0] if ":" in given else "dcx"
            if provider == "dcx":
                names.add(given.rsplit(":", 1)[-1])
        return names

    def merged(self, overrides: dict[str, Any], source: str = "flags") -> "RunConfig":
        """A copy with the non-None ``overrides`` applied; plugin options merge per plugin."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "options":
                for plugin, opts in value.items():
                    data["options"].setdefault(plugin, {}).update(opts)
            else:
                data[key] = value
        return RunConfig.from_dict(data, source)

    @classmethod
    def cli_fields(cls, scope: str) -> list[str]:
        """Names of the fields offered as flags by a command of ``scope`` ('run' or 'train')."""
        wanted = {"run": ("run", "train"), "train": ("train",)}[scope]
        return [n for n, f in cls.model_fields.items() if (f.json_schema_extra or {}).get("cli") in wanted]


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
    field = RunConfig.model_fields.get(name)
    extra = (field.json_schema_extra or {}) if field is not None else {}
    return extra.get("flag") or "--" + name.replace("_", "-")


_DESCRIBE = {
    "greater_than_equal": lambda c: f"must be >= {c['ge']}",
    "greater_than": lambda c: f"must be > {c['gt']}",
    "less_than_equal": lambda c: f"must be <= {c['le']}",
    "less_than": lambda c: f"must be < {c['lt']}",
    "int_parsing": lambda c: "must be an integer",
    "int_type": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be a whole number",
    "float_parsing": lambda c: "must be a number",
    "float_type": lambda c: "must be a number",
    "finite_number": lambda c: "must be a finite number",
    "bool_parsing": lambda c: "must be true or false",
    "bool_type": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string",
    "string_too_short": lambda c: "must not be empty",
    "literal_error": lambda c: f"must be one of {c['expected'].replace(chr(39), '')}",
    "dict_type": lambda c: "must be a table of plugin options",
}


def describe_error(exc: ValidationError, source: str) -> str:
    """One line for the first problem of a ValidationError, in the words of ``source``."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    name = loc[0] if loc else "?"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        known = ", ".join(n for n in RunConfig.model_fields)
        return f"{source}: unknown setting '{name}'; known: {known}"
    what = flag_of(name) if source == "flags" else ".".join(loc)
    ctx = err.get("ctx") or {}
    describe = _DESCRIBE.get(err["type"])
    if describe is not None:
        text = describe(ctx)
    elif err["type"] == "value_error":
        text = str(ctx.get("error", err["msg"]))
    else:
        text = err["msg"][0].lower() + err["msg"][1:]
    shown = "" if isinstance(value, dict) else f", got {value!r}"
    prefix = "" if source == "flags" else f"{source}: "
    return f"{prefix}{what} {text}{shown}"
