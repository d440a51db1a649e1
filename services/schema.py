"""HTTP request / response models, generated from the feature spec (FeatureSpec.request_columns).

The same spec that drives preprocessing decides which fields a rank request may carry and their
types, so the OpenAPI document always matches the model being served. Every bound is explicit:
string length, list length, candidates per request; floats must be finite.

A candidate row is a TypedDict (validated as strictly as a model: unknown fields, wrong types, NaN /
inf and lone surrogates are 422 errors naming the field), so a request of 100 candidates is checked
into plain dicts and turned into Arrow column by column, without building and dumping 100 models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Sequence

from typing_extensions import NotRequired, TypedDict  # pydantic reads typing_extensions' TypedDict on 3.11

import pyarrow as pa
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from muxrec.artifacts import NAME_PATTERN

from muxrec.services.settings import ServeSettings
from muxrec.spec import FeatureSpec, RequestColumn

MAX_LIST_ITEMS = 1000


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (a lone surrogate such as \\ud800 is not)") from None
    return value


Text = Annotated[StrictStr, AfterValidator(_utf8)]  # JSON allows lone surrogates; UTF-8, Arrow and Redis do not
Weight = Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)] | Annotated[StrictInt, Field(ge=0)]
_ARROW = {"string": pa.string(), "image": pa.string(), "number": pa.float64(), "string_list": pa.list_(pa.string())}


def _annotation(column: RequestColumn, settings: ServeSettings) -> Any:
    text = Annotated[Text, Field(max_length=settings.max_string_length)]
    category = text | StrictInt
    if column.type == "number":
        return Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt
    if column.type == "string_list":
        return Annotated[list[category], Field(max_length=MAX_LIST_ITEMS)]
    if column.type == "image":  # base64 of the file's bytes; decoded and checked by services/content.py
        return Annotated[StrictStr, Field(max_length=4 * -(-settings.max_image_bytes // 3))]
    return category


def _class_name(spec: FeatureSpec, suffix: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", spec.name) if part) + suffix


class RankedItem(BaseModel):
    id: str = Field(description="the candidate's item key (or its index when the spec has none)")
    index: int = Field(description="position of the candidate in the request")
    score: float = Field(description="the ranking score: the task's probability, or for a multi-task model the "
                                     "blend of its tasks' probabilities (weights in `blend`)")
    task_scores: dict[str, float] | None = Field(None, description="every task's probability, multi-task models")


class RankResponse(BaseModel):
    model_version: str
    items: list[RankedItem]
    blend: dict[str, float] | None = Field(None, description="multi-task models: the weights (summing to 1) "
                                                             "that made `score`")


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity: Literal["user", "item"]
    ids: list[Annotated[Text, Field(min_length=1, max_length=256)] | StrictInt] = Field(min_length=1)


class EmbedResponse(BaseModel):
    model_version: str
    entity: str
    dim: int
    ids: list[str]
    vectors: list[list[float]]
    known: list[bool] = Field(description="False where the id is unknown to the model (out-of-vocabulary row)")
    cache_hits: list[bool]


class ContentEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feature: Annotated[StrictStr, Field(max_length=128)] = Field(description="a content feature of the live model's "
                                                                            "spec (text with an encoder, or image)")
    values: list[Annotated[StrictStr, Field(max_length=1 << 20)]] = Field(
        min_length=1, max_length=256, description="texts, or base64-encoded image files")


class ContentEmbedResponse(BaseModel):
    encoder: str
    dim: int
    vectors: list[list[float]]
    cache_hits: list[bool]


class RankingSummary(BaseModel):
    method: str
    task: str | None = Field(description="the label the scores refer to; null for an unsupervised method")
    artifact: str = Field(description="the registry version the ranking is stored in (name/vNNNN)")
    features: int = Field(description="number of features ranked")
    created_at: str | None


class RankingsResponse(BaseModel):
    model_version: str
    rankings: list[RankingSummary] = Field(description="one per method, the newest stored ranking of each")


class RankedFeature(BaseModel):
    name: str
    score: float = Field(description="higher is more useful")
    detail: dict[str, Any] = Field(description="the method's facts behind the score (e.g. std)")


class RankingResponse(BaseModel):
    model_version: str
    method: str
    task: str | None
    artifact: str
    created_at: str | None
    meta: dict[str, Any] = Field(description="method-specific facts about the run (seed, repeats, rows, ...)")
    features: list[RankedFeature] = Field(description="best first")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]  # a version or an alias inside the registry


@dataclass(frozen=True)
class ModelColumns:
    """The request columns one model version reads: what the gateway sends its Ranker and requires."""

    spec: FeatureSpec
    columns: tuple[RequestColumn, ...]

    @classmethod
    def of(cls, spec: FeatureSpec) -> ModelColumns:
        return cls(spec, tuple(spec.request_columns()))


def column_changes(served: Sequence[RequestColumn], target: Sequence[RequestColumn]) -> list[str]:
    """Why a model reading request columns `target` cannot be served behind the request model of
    `served`: one line per column it adds or reads as another type; empty when its columns are a
    subset (same name and type each). Required flags may differ: the live model's apply per request."""
    types = {c.name: c.type for c in served}
    return [f"{c.name!r} ({c.type}) is not a field of the request model" if c.name not in types else
            f"{c.name!r} is read as {c.type}, the request model has it as {types[c.name]}"
            for c in target if types.get(c.name) != c.type]


class RequestSchema:
    """The rank request model for one spec (the deploy-time one), and the conversion of a valid
    request to Arrow for the model that is live (whose columns are a subset of the spec's)."""

    def __init__(self, spec: FeatureSpec, settings: ServeSettings):
        self.spec = spec
        self.columns = spec.request_columns()
        self.item_key = spec.keys.get("item")
        # Keys are the source column names as they are (spaces, "copy", "schema" included).
        self.Row = TypedDict(_class_name(spec, "Row"),
                             {c.name: NotRequired[_annotation(c, settings) | None] for c in self.columns})
        self.Row.__pydantic_config__ = ConfigDict(extra="forbid")
        self.Request = create_model(
            _class_name(spec, "RankRequest"),
            __config__=ConfigDict(extra="forbid"),
            context=(self.Row | None, Field(None, description="fields shared by every candidate (e.g. the user)")),
            candidates=(list[self.Row], Field(min_length=1, max_length=settings.max_candidates)),
            top_k=(StrictInt | None, Field(None, ge=1, le=settings.max_candidates)),
            # Task names are checked against the live model's tasks when it answers (a reload may add tasks).
            blend=(dict[Annotated[Text, Field(max_length=128)], Weight] | None,
                   Field(None, max_length=64, description="multi-task models: rank by the sum of these weights times each task's "
                                           "probability (default: the Serve config's rank_blend, else the spec's blend)")),
        )
        self.EmbedRequest = create_model(
            "EmbedRequest", __base__=EmbedRequest,
            ids=(list[Annotated[Text, Field(min_length=1, max_length=256)] | StrictInt],
                 Field(min_length=1, max_length=settings.max_embed_ids)),
        )

    def to_table(self, request: BaseModel, columns: Sequence[RequestColumn] | None = None
                 ) -> tuple[pa.Table, list[str]]:
        """Merged (context + candidate) rows as an Arrow table of `columns` (the live model's; default
        the spec's), and each candidate's id. Fields of the request model that the live model does not
        read are accepted and left out.

        Raises RequestValidationError (HTTP 422) naming the candidate and field for a required field
        that neither the context nor the candidate gives, or one given by both. An omitted field
        and an explicit null are the same missing value, read as a null in the source data is
        (muxrec.encoding); only a column that `columns` marks required (`Feature.is_required`) must be given.
        """
        context = {k: v for k, v in (request.context or {}).items() if v is not None}
        rows: list[dict[str, Any]] = request.candidates
        errors, arrays = [], {}
        for c in self.columns if columns is None else columns:
            values = [row.get(c.name) for row in rows]
            if c.name in context:
                for i, v in enumerate(values):
                    if v is not None:
                        errors.append({"loc": ("body", "candidates", i, c.name), "type": "value_error",
                                       "msg": f"{c.name!r} is given in both context and candidate {i}", "input": v})
                values = [context[c.name]] * len(rows)
            elif c.required:
                errors += [{"loc": ("body", "candidates", i, c.name), "type": "missing",
                            "msg": "field required (in the candidate or in context)", "input": None}
                           for i, v in enumerate(values) if v is None]
            arrays[c.name] = _column(values, c.type)
        if errors:
            errors.sort(key=lambda e: e["loc"][2])  # by candidate, as a reader goes through the request
            raise RequestValidationError(errors[:50])
        key = self.item_key
        if key in arrays:
            keys = arrays[key].to_pylist()
        elif key:  # a live model that does not read the item key: the request may still carry it
            keys = [context[key]] * len(rows) if key in context else [row.get(key) for row in rows]
        else:
            keys = [None] * len(rows)
        ids = [str(i) if k is None else str(k) for i, k in enumerate(keys)]
        return pa.table(arrays), ids


def _column(values: list[Any], kind: str) -> pa.Array:
    """One request column as Arrow: categories as text (an integer category 7 reads as "7", as in
    preprocessing), numbers as float64, lists of categories as list<string>."""
    if kind == "number":
        return pa.array(values, pa.float64())
    try:
        return pa.array(values, _ARROW[kind])  # all text already: the common case, no Python loop
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    if kind == "string":
        return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], pa.string())
    return pa.array([None if v is None else [x if isinstance(x, str) else str(x) for x in v] for v in values],
                    _ARROW[kind])
