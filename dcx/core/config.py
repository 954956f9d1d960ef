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

#: Settings and plugin options removed from dcx (they measured to lose; docs/decisions.md), with the
#: value that trained as dcx trains now and the last dcx version that had them. A run or config file
#: that used one at another value is refused, naming it; at that value it is dropped silently.
REMOVED_SETTINGS: dict[str, Any] = {"warp": 1.0, "cluster_layer": "features", "cluster_views": 1, "label_smoothing": 0.0,
                                    "whiten": True, "views": 1, "head_lr": None}
REMOVED_OPTIONS: dict[str, dict[str, Any]] = {
    "kmeans": {"init": "random", "head_scale": 1.0, "keep_head": False},
    "swav": {"heads": 1, "head_scale": 1.0, "merged_heads": 0, "merge_scale": 0.25, "neighbours": 10,
             "neighbour_weight": 0.0, "feature_relu": False, "cluster_heads": 0, "cluster_weight": 1.0,
             "cluster_until": 1.0, "jitter_scale": 2.0, "passes_scale": 2.0, "small_max_scale": 0.14},
    "dcv2": {"feature_relu": False, "merge_every_head": False, "cluster_on": "crops", "train_prototypes": False,
             "small_max_scale": 0.14},
    "pic": {"distribute_singletons": True},
    "sinkhorn": {"batch_size": 4096},
}
#: The last release that had them.
REMOVED_AFTER = "0.1.0"


def drop_removed(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` (a config's settings) without removed settings and built-in plugin options that hold
    the value dcx now trains at; any other value of one is an InputError naming it."""
    out = dict(data)
    for name, kept in REMOVED_SETTINGS.items():
        if name in out:
            value = out.pop(name)
            if value != kept and not (name == "views" and value is None):
                raise InputError(f"{source}: setting '{name}' = {value!r} was removed after dcx {REMOVED_AFTER} (it "
                                 f"measured to lose, docs/decisions.md): drop it, or use dcx {REMOVED_AFTER} for this run")
    options = {plugin: dict(values) for plugin, values in (out.get("options") or {}).items()}
    builtin = _builtin_names(out)
    for plugin, removed in REMOVED_OPTIONS.items():
        for key, kept in removed.items() if plugin in builtin else ():
            if key in options.get(plugin, {}):
                value = options[plugin].pop(key)
                if value != kept:
                    raise InputError(f"{source}: option {plugin}.{key} = {value!r} was removed after dcx "
                                     f"{REMOVED_AFTER} (docs/decisions.md): drop it, or use dcx {REMOVED_AFTER} for this run")
    if "options" in out:
        out["options"] = options
    return out


def _builtin_names(data: dict[str, Any]) -> set[str]:
    """The names of a config's plugins that dcx provides: recorded so, or not qualified by another package."""
    names = set()
    for kind in ("clusterer", "backbone", "dataset"):
        given = str(data.get(kind) or RunConfig.model_fields[kind].default)
        provider = (data.get("plugins") or {}).get(kind, {}).get("package")
        if provider is None:
            provider = given.split(":", 1)[0] if ":" in given else "dcx"
        if provider == "dcx":
            names.add(given.rsplit(":", 1)[-1])
    return names


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
        "per image; default: the dataset's, as the clusterer adjusts it)", ge=1)
    batch_size: int | None = setting(None, "images per optimiser step (default: the dataset's)", ge=1)
    lr: float = setting(0.05, "SGD learning rate (reference: 0.05)", gt=0)
    lr_schedule: Literal["cosine", "constant"] = setting(
        "cosine", "backbone learning-rate schedule, cosine or constant (cosine decays to 0 over the run; constant "
        "is the reference's)")
    warmup_epochs: float = setting(0.0, "linear learning-rate warm-up from 0 over this many epochs (SwAV: 10)", ge=0)
    momentum: float = setting(0.9, "SGD momentum (reference: 0.9)", ge=0, lt=1)
    weight_decay: float = setting(1e-5, "SGD weight decay (reference: 1e-5)", ge=0)
    image_size: int | None = setting(None, "input side in pixels, 8 to 1024 (default: the dataset's)", ge=8, le=1024)
    width: float | None = setting(None, "channel multiplier of the backbone (1.0 = paper)", gt=0, le=16)
    sobel: bool | None = setting(None, "fixed Sobel input layer (default: the dataset's, else the backbone's)")
    flip: bool | None = setting(None, "random horizontal flips in training (default: the dataset's; off for "
                                      "digits and characters)")
    augment: Literal["crop", "affine", "elastic"] | None = setting(
        None, "training augmentation, crop, affine or elastic (crop: random resized crops, the reference; affine: "
        "+ small rotations, shifts, zoom, shear; elastic: + elastic warps; default: the dataset's, else elastic "
        "up to 64 px and crop above)")
    jitter: float | None = setting(
        None, "photometric jitter: brightness and contrast by up to this fraction (colour images: saturation too, "
        "hue by a quarter of it) with p 0.8, and Gaussian blur with p 0.5 (SwAV's colour distortion is 0.8) "
        "(default: the dataset's: 0.4 for digits and characters, whose class never depends on intensity; else 0, "
        "the reference; swav's views take twice it)", ge=0, le=1)
    crop_scale: float | None = setting(
        None, "smallest crop area of training crops (default: 0.08 above 64 px, 0.5 at or below)", gt=0, le=1)
    pca_dim: int = setting(256, "PCA dimensions before offline clustering (paper: 256)", ge=1)
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
    image_memory_gb: float = setting(
        2.0, "RAM the images may take decoded (uint8 at the training size): within it they are decoded once, "
        "above it again every epoch by the loader workers", gt=0, cli="run")
    image_cache: bool = setting(
        False, "images over --image-memory-gb: decode them once into a uint8 memory map in the run directory "
        "(N x channels x side² bytes of disk, removed after the run) instead of again every epoch", cli="run")
    compile: bool = setting(False, "torch.compile the backbone for the training step (the first epoch pays the "
                                   "compilation; docs/benchmarks.md)", cli="run")
    profile: bool = setting(False, "write a torch.profiler trace of the first epoch this process trains to "
                                   "profile/ in the run directory", cli="run")
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
        data = drop_removed(data, source)
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
        """A run directory's config.toml (one written before a setting was removed loads while it used
        that setting at the value dcx trains at now: ``drop_removed``)."""
        return cls.load(path)

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
