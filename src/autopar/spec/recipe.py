"""The training recipe: model, data and training settings (validated once, frozen).

A recipe comes from YAML (`load_recipe`) or is built in Python from these classes.
Sizes are validated here; shape arithmetic that needs the model (heads dividing
hidden, ...) is checked by the model specs' validators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from autopar.errors import InputError, from_pydantic
from autopar.spec.enums import Optimizer, Precision


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False, allow_inf_nan=False)


# Sizes are bounded where a larger value is no real model but would hang or overflow a
# search or a meta-device profile (the bound is in pydantic's message).
Depth = Annotated[int, Field(gt=0, le=10_000)]  # layers, conv stages
Width = Annotated[int, Field(gt=0, le=2**24)]  # hidden sizes, heads, vocab, classes, input features per layer
Tokens = Annotated[int, Field(gt=0, le=2**24)]  # sequence length, image side, shape entries
Count = Annotated[int, Field(gt=0, le=10**15)]  # samples, steps
Batch = Annotated[int, Field(gt=0, le=2**24)]  # global batch


# ---------------------------------------------------------------- model specs


class _TransformerSpec(_Spec):
    layers: Depth
    hidden: Width
    heads: Width
    seq_len: Tokens
    vocab: Width
    ffn_hidden: Optional[Width] = None
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    experts: Optional[Annotated[int, Field(ge=2, le=4096)]] = None  # mixture of experts in every block's MLP (models/moe.py)
    top_k: Annotated[int, Field(ge=1, le=64)] = 2  # experts each token is routed to

    @model_validator(mode="after")
    def _top_k_within_experts(self):
        if self.experts is not None and self.top_k > self.experts:
            raise InputError("top_k", self.top_k, f"must be at most experts ({self.experts}); choose 1..{self.experts}")
        return self

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
    kv_heads: Optional[Width] = None
    multiple_of: Width = 256
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
    input_dim: Width
    widths: Annotated[list[Width], Field(min_length=1, max_length=10_000)]
    classes: Width


class CNNSpec(_Spec):
    """ResNet-style CNN: a stem, `depth` residual blocks (two 3x3 convs each) in up to 4 stages."""

    family: Literal["cnn"]
    depth: Depth
    width: Width
    image_size: Tokens
    channels: Width = 3
    classes: Width


class WideLinearSpec(_Spec):
    """The high-dimensional case: one huge input layer (input_dim up to 1e9)."""

    family: Literal["wide_linear"]
    input_dim: Annotated[int, Field(gt=0, le=10**10)]
    hidden: Optional[Width] = None
    classes: Width = 2


class InputSpec(_Spec):
    shape: Annotated[list[Tokens], Field(min_length=0, max_length=8)]
    dtype: Literal["float32", "float64", "bfloat16", "float16", "int64", "int32", "bool"] = "float32"
    high: Width = 2  # exclusive upper bound of random integer inputs (token ids, classes)


class ModuleSpec(_Spec):
    """Any user nn.Module: `module: "package.module:factory"`, called with `kwargs`.

    `inputs` is a list (forward(*tensors), in order) or a mapping name -> input: then
    forward is called as forward(**{name: tensor}), or forward(dict) if it takes one
    argument that is not among the names (models.KeywordInputs). The output may be a
    tensor, a tuple (first item used), or a dict / transformers ModelOutput: its
    `loss` if present, else its `logits`.
    """

    module: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
    kwargs: dict[str, Any] = Field(default_factory=dict)
    inputs: Union[Annotated[list[InputSpec], Field(min_length=1)], Annotated[dict[str, InputSpec], Field(min_length=1)]]
    target: Optional[InputSpec] = None  # with a target, loss = cross-entropy (int) or MSE (float)
    blocks: Optional[Union[str, list[str]]] = None  # the container(s) of repeated blocks, e.g. "encoder.layers"; default: found

    @property
    def input_names(self) -> Optional[tuple[str, ...]]:
        """Keyword names of the inputs, in order; None for positional inputs."""
        return tuple(self.inputs) if isinstance(self.inputs, dict) else None

    @property
    def input_specs(self) -> tuple[InputSpec, ...]:
        return tuple(self.inputs.values()) if isinstance(self.inputs, dict) else tuple(self.inputs)


HFTask = Literal["causal_lm", "masked_lm", "seq2seq_lm", "sequence_classification", "image_classification"]
HF_TASKS: tuple[str, ...] = HFTask.__args__
# The transformers auto class each task builds; `auto_class` may name one of these instead of `task`.
HF_AUTO_CLASSES: dict[str, str] = {
    "causal_lm": "AutoModelForCausalLM",
    "masked_lm": "AutoModelForMaskedLM",
    "seq2seq_lm": "AutoModelForSeq2SeqLM",
    "sequence_classification": "AutoModelForSequenceClassification",
    "image_classification": "AutoModelForImageClassification",
}
_HF_OWN_KEYS = ("config", "seq_len", "target_len", "task", "auto_class")


class TransformersSpec(_Spec):
    """A Hugging Face transformers model built offline from its config class (never downloaded).

    `transformers:` holds our keys; every other key is a keyword of the config class:
      config       the config class, e.g. LlamaConfig, BertConfig, T5Config, ViTConfig
      task         causal_lm (default) | masked_lm | seq2seq_lm | sequence_classification
                   | image_classification: picks the inputs, the output and the loss
      auto_class   alternatively, the auto class to build (AutoModelForSeq2SeqLM, ...);
                   its task is implied; give both to pair another auto class with a task
      seq_len      tokens per sample of text tasks (default 512); the encoder length of seq2seq
      target_len   seq2seq only: decoder tokens per sample (default seq_len)
    Image tasks read channels and image size from the config (num_channels, image_size).
    """

    transformers: dict[str, Any]
    blocks: Optional[Union[str, list[str]]] = None  # e.g. "model.model.layers"; default: found (autopar profile shows them)

    @model_validator(mode="after")
    def _has_config(self):
        t = self.transformers
        if not isinstance(t.get("config"), str):
            raise ValueError("transformers.config must name a config class, e.g. LlamaConfig")
        if "task" in t and t["task"] not in HF_TASKS:
            raise InputError("transformers.task", t["task"], f"expected one of {', '.join(HF_TASKS)}")
        auto = t.get("auto_class")
        if auto is not None and not (isinstance(auto, str) and auto.startswith("AutoModel")):
            raise InputError("transformers.auto_class", auto, "expected a transformers auto class, e.g. AutoModelForSeq2SeqLM")
        if auto is not None and "task" not in t and auto not in HF_AUTO_CLASSES.values():
            raise InputError("transformers.task", None, f"auto_class {auto} implies no task: add task, one of {', '.join(HF_TASKS)}")
        for key in ("seq_len", "target_len"):
            if key in t and not (isinstance(t[key], int) and not isinstance(t[key], bool) and t[key] > 0):
                raise InputError(f"transformers.{key}", t[key], "expected a positive integer (tokens per sample)")
        if "target_len" in t and self.task != "seq2seq_lm":
            raise InputError("transformers.target_len", t["target_len"], "only seq2seq_lm has a decoder length; remove it or set task: seq2seq_lm")
        return self

    @property
    def config_name(self) -> str:
        return self.transformers["config"]

    @property
    def task(self) -> str:
        t = self.transformers
        if "task" in t:
            return t["task"]
        by_class = {cls: task for task, cls in HF_AUTO_CLASSES.items()}
        return by_class.get(t.get("auto_class", ""), "causal_lm")

    @property
    def auto_class(self) -> str:
        return self.transformers.get("auto_class") or HF_AUTO_CLASSES[self.task]

    @property
    def seq_len(self) -> int:
        return int(self.transformers.get("seq_len", 512))

    @property
    def target_len(self) -> int:
        """Decoder tokens per sample (seq2seq); the other tasks' targets follow the inputs."""
        return int(self.transformers.get("target_len", self.seq_len))

    @property
    def config_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.transformers.items() if k not in _HF_OWN_KEYS}


FamilySpec = Union[GPTSpec, LlamaSpec, MLPSpec, CNNSpec, WideLinearSpec]
ModelSpec = Union[GPTSpec, LlamaSpec, MLPSpec, CNNSpec, WideLinearSpec, ModuleSpec, TransformersSpec]
_FAMILIES = {"gpt": GPTSpec, "llama": LlamaSpec, "mlp": MLPSpec, "cnn": CNNSpec, "wide_linear": WideLinearSpec}


# ------------------------------------------------------------ data, training


class DataSpec(_Spec):
    samples: Count
    sample_bytes: Optional[Count] = None  # else derived from the model's input shapes
    storage_GBps: Optional[PositiveFloat] = None  # read bandwidth of the dataset's storage, per node
    loader: Optional[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = None


class TrainingSpec(_Spec):
    global_batch: Batch
    optimizer: Optimizer = Optimizer.ADAMW
    precision: Precision = Precision.BF16
    steps: Optional[Count] = None
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
    cluster: Optional[Union[str, dict[str, Any]]] = None  # a mapping or a preset name: validated by spec.cluster.parse_cluster

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


MAX_YAML_BYTES = 1 << 20  # a recipe or cluster file; real ones are a few hundred bytes
MAX_YAML_DEPTH = 64  # nesting of mappings and lists
MAX_YAML_NODES = 100_000  # values after alias expansion (a 600-byte alias bomb reaches billions)


def load_yaml(path: str | Path, what: str) -> Any:
    """A YAML file as data, bounded in size, depth and expanded size; every failure one line."""
    p = Path(path)
    if p.is_dir():
        raise InputError(what, str(path), "is a directory; give the path of a YAML file")
    if not p.is_file():
        raise InputError(what, str(path), "no such file; give the path of a YAML file")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise InputError(what, str(path), f"cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise InputError(what, str(path), f"is {len(raw):,} bytes; a recipe or cluster file is at most {MAX_YAML_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(what, str(path), f"is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_yaml_size(node, what, str(path))
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(what, str(path), f"is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise InputError(what, str(path), f"nests too deep; at most {MAX_YAML_DEPTH} levels") from None


def _check_yaml_size(root: Any, what: str, path: str) -> None:
    """Count the values of the composed YAML graph as safe_load would build them (an alias
    counts its whole target again), and its depth, without building anything."""
    sizes: dict[int, int] = {}

    def walk(node: Any, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise InputError(what, path, f"nests deeper than {MAX_YAML_DEPTH} levels")
        if id(node) in sizes:
            return sizes[id(node)]
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(walk(k, depth + 1) + walk(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(walk(v, depth + 1) for v in node.value)
        else:
            n = 1
        if n > MAX_YAML_NODES:
            raise InputError(what, path, f"expands to more than {MAX_YAML_NODES:,} values (YAML aliases); write it out plainly")
        sizes[id(node)] = n
        return n

    if root is not None:
        walk(root, 0)


def load_recipe(path: str | Path) -> Recipe:
    return parse_recipe(load_yaml(path, "recipe"), source=str(path))
