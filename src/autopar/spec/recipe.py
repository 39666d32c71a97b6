"""The training recipe: model, data and training settings (validated once, frozen).

A recipe comes from YAML (`load_recipe`) or is built in Python from these classes.
Sizes are validated here; shape arithmetic that needs the model (heads dividing
hidden, ...) is checked by the model specs' validators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from autopar.errors import InputError, from_pydantic
from autopar.spec.enums import Optimizer, Precision


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


# ---------------------------------------------------------------- model specs


class _TransformerSpec(_Spec):
    layers: PositiveInt
    hidden: PositiveInt
    heads: PositiveInt
    seq_len: PositiveInt
    vocab: PositiveInt
    ffn_hidden: Optional[PositiveInt] = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden % self.heads:
            raise InputError(
                "heads",
                self.heads,
                f"must divide hidden ({self.hidden}): {self.hidden} % {self.heads} = {self.hidden % self.heads}; "
                f"choose a divisor of {self.hidden}",
            )
        return self


class GPTSpec(_TransformerSpec):
    """GPT-2/3 style decoder: learned positions, LayerNorm, GeLU MLP (ffn 4h), tied head."""

    family: Literal["gpt"]
    tie_embeddings: bool = True
    bias: bool = True

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.hidden


class LlamaSpec(_TransformerSpec):
    """Llama style decoder: RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, untied head."""

    family: Literal["llama"]
    kv_heads: Optional[PositiveInt] = None
    multiple_of: PositiveInt = 256
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _kv_heads_divide_heads(self):
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise InputError(
                "kv_heads",
                self.kv_heads,
                f"must divide heads ({self.heads}): {self.heads} % {self.kv_heads} = {self.heads % self.kv_heads}",
            )
        if (self.hidden // self.heads) % 2:
            raise InputError("heads", self.heads, f"head dim hidden/heads = {self.hidden // self.heads} must be even for rotary embeddings")
        return self

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def ffn(self) -> int:
        """SwiGLU width: 2/3 of 4h, rounded up to a multiple of `multiple_of` (Llama's rule)."""
        if self.ffn_hidden:
            return self.ffn_hidden
        width = int(2 * 4 * self.hidden / 3)
        return self.multiple_of * ((width + self.multiple_of - 1) // self.multiple_of)


class MLPSpec(_Spec):
    family: Literal["mlp"]
    input_dim: PositiveInt
    widths: Annotated[list[PositiveInt], Field(min_length=1)]
    classes: PositiveInt


class CNNSpec(_Spec):
    """ResNet-style CNN: a stem, `depth` residual blocks (two 3x3 convs each) in up to 4 stages."""

    family: Literal["cnn"]
    depth: PositiveInt
    width: PositiveInt
    image_size: PositiveInt
    channels: PositiveInt = 3
    classes: PositiveInt


class WideLinearSpec(_Spec):
    """The high-dimensional case: one huge input layer (input_dim up to 1e9)."""

    family: Literal["wide_linear"]
    input_dim: Annotated[int, Field(gt=0, le=10**10)]
    hidden: Optional[PositiveInt] = None
    classes: PositiveInt = 2


class InputSpec(_Spec):
    shape: Annotated[list[PositiveInt], Field(min_length=0)]
    dtype: Literal["float32", "float64", "bfloat16", "float16", "int64", "int32", "bool"] = "float32"
    high: PositiveInt = 2  # exclusive upper bound of random integer inputs (token ids, classes)


class ModuleSpec(_Spec):
    """Any user nn.Module: `module: "package.module:factory"`, called with `kwargs`."""

    module: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    inputs: Annotated[list[InputSpec], Field(min_length=1)]
    target: Optional[InputSpec] = None  # with a target, loss = cross-entropy (int) or MSE (float)


class TransformersSpec(_Spec):
    """A Hugging Face transformers model built offline from its config class."""

    transformers: dict[str, Any]

    @model_validator(mode="after")
    def _has_config(self):
        if not isinstance(self.transformers.get("config"), str):
            raise ValueError("transformers.config must name a config class, e.g. LlamaConfig")
        return self

    @property
    def config_name(self) -> str:
        return self.transformers["config"]

    @property
    def seq_len(self) -> int:
        return int(self.transformers.get("seq_len", 512))

    @property
    def config_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.transformers.items() if k not in ("config", "seq_len")}


FamilySpec = Union[GPTSpec, LlamaSpec, MLPSpec, CNNSpec, WideLinearSpec]
ModelSpec = Union[GPTSpec, LlamaSpec, MLPSpec, CNNSpec, WideLinearSpec, ModuleSpec, TransformersSpec]
_FAMILIES = {"gpt": GPTSpec, "llama": LlamaSpec, "mlp": MLPSpec, "cnn": CNNSpec, "wide_linear": WideLinearSpec}


# ------------------------------------------------------------ data, training


class DataSpec(_Spec):
    samples: PositiveInt
    sample_bytes: Optional[PositiveInt] = None  # else derived from the model's input shapes
    storage_GBps: Optional[PositiveFloat] = None  # read bandwidth of the dataset's storage, per node
    loader: Optional[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = None


class TrainingSpec(_Spec):
    global_batch: PositiveInt
    optimizer: Optimizer = Optimizer.ADAMW
    precision: Precision = Precision.BF16
    steps: Optional[PositiveInt] = None
    epochs: Optional[PositiveFloat] = None
    lr: PositiveFloat = 1e-3
    seed: int = 0

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give steps or epochs, not both")
        return self


class Recipe(_Spec):
    model: ModelSpec
    data: DataSpec
    training: TrainingSpec
    cluster: Optional[dict[str, Any]] = None  # validated by spec.cluster.load_cluster

    @model_validator(mode="before")
    @classmethod
    def _pick_model_kind(cls, raw: Any) -> Any:
        """Choose the model spec class by its keys, so errors name the right fields."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        model = raw["model"]
        kinds = [k for k in ("family", "module", "transformers") if k in model]
        if len(kinds) != 1:
            raise ValueError(
                f"model: needs exactly one of family, module, transformers; got {kinds or 'none'}"
            )
        if kinds[0] == "family":
            family = model["family"]
            if family not in _FAMILIES:
                raise InputError("model.family", family, f"expected one of {', '.join(_FAMILIES)}")
            spec_cls = _FAMILIES[family]
        else:
            spec_cls = ModuleSpec if kinds[0] == "module" else TransformersSpec
        try:
            return {**raw, "model": spec_cls.model_validate(model)}
        except ValidationError as err:
            raise from_pydantic(err, prefix="model") from None

    def steps_to_train(self) -> int:
        """Optimizer steps the recipe asks for (epochs are converted with the global batch)."""
        if self.training.steps is not None:
            return self.training.steps
        if self.training.epochs is not None:
            per_epoch = -(-self.data.samples // self.training.global_batch)
            return max(1, round(self.training.epochs * per_epoch))
        return 100


def parse_recipe(raw: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe given as plain data; raise InputError naming the bad field."""
    if not isinstance(raw, dict):
        raise InputError(source, raw, "expected a mapping with keys model, data, training")
    try:
        return Recipe.model_validate(raw)
    except InputError:
        raise
    except ValidationError as err:
        raise _unwrap(err) from None


def _unwrap(err: ValidationError) -> InputError:
    """Errors raised inside a before-validator arrive wrapped; keep the inner InputError."""
    return from_pydantic(err)


def load_yaml(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(what, str(path), "no such file; give the path of a YAML file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(what, str(path), f"is not valid YAML{where}: {getattr(err, 'problem', err)}") from None


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(load_yaml(path, "recipe"), source=str(path))
