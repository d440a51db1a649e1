"""HTTP request / response models, generated from the feature spec (FeatureSpec.request_columns).

The same spec that drives preprocessing decides which fields a rank request may carry and their
types, so the OpenAPI document always matches the model being served. Every bound is explicit:
string length, list length, candidates per request; floats must be finite.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

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
_ARROW = {"string": pa.string(), "number": pa.float64(), "string_list": pa.list_(pa.string())}


def _annotation(column: RequestColumn, settings: ServeSettings) -> Any:
    text = Annotated[Text, Field(max_length=settings.max_string_length)]
    category = text | StrictInt
    if column.type == "number":
        return Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt
    if column.type == "string_list":
        return Annotated[list[category], Field(max_length=MAX_LIST_ITEMS)]
    return category


def _class_name(spec: FeatureSpec, suffix: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", spec.name) if part) + suffix


class RankedItem(BaseModel):
    id: str = Field(description="the candidate's item key (or its index when the spec has none)")
    index: int = Field(description="position of the candidate in the request")
    score: float = Field(description="probability of the first task (e.g. click)")
    task_scores: dict[str, float] | None = Field(None, description="every task's probability, multi-task models")


class RankResponse(BaseModel):
    model_version: str
    items: list[RankedItem]


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


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[StrictStr, Field(pattern=NAME_PATTERN)]  # a version or an alias inside the registry


class RequestSchema:
    """The rank request model for one spec, and the conversion of a valid request to Arrow."""

    def __init__(self, spec: FeatureSpec, settings: ServeSettings):
        self.spec = spec
        self.columns = spec.request_columns()
        self.item_key = spec.keys.get("item")
        # Source column names may hold spaces or shadow BaseModel attributes ("copy", "schema"):
        # each is the alias of a plain field name, and requests are read and dumped by alias.
        fields = {f"column_{i}": (_annotation(c, settings) | None, Field(None, alias=c.name))
                  for i, c in enumerate(self.columns)}
        self.Row = create_model(_class_name(spec, "Row"), __config__=ConfigDict(extra="forbid"), **fields)
        self.Request = create_model(
            _class_name(spec, "RankRequest"),
            __config__=ConfigDict(extra="forbid"),
            context=(self.Row | None, Field(None, description="fields shared by every candidate (e.g. the user)")),
            candidates=(list[self.Row], Field(min_length=1, max_length=settings.max_candidates)),
            top_k=(StrictInt | None, Field(None, ge=1, le=settings.max_candidates)),
        )
        self.EmbedRequest = create_model(
            "EmbedRequest", __base__=EmbedRequest,
            ids=(list[Annotated[Text, Field(min_length=1, max_length=256)] | StrictInt],
                 Field(min_length=1, max_length=settings.max_embed_ids)),
        )

    def to_table(self, request: BaseModel) -> tuple[pa.Table, list[str]]:
        """Merged (context + candidate) rows as an Arrow table, and each candidate's id.

        Raises RequestValidationError (HTTP 422) naming the candidate and field for a required field
        that neither the context nor the candidate gives, or one given by both. An omitted field
        and an explicit null are the same missing value, read as a null in the source data is
        (muxrec.encoding); only a feature the spec makes required (`Feature.is_required`) must be given.
        """
        context = request.context.model_dump(exclude_none=True, by_alias=True) if request.context else {}
        errors, rows = [], []
        for i, candidate in enumerate(request.candidates):
            row = candidate.model_dump(exclude_none=True, by_alias=True)
            for name in sorted(set(row) & set(context)):
                errors.append({"loc": ("body", "candidates", i, name), "type": "value_error",
                               "msg": f"{name!r} is given in both context and candidate {i}", "input": row[name]})
            row = {**context, **row}
            for c in self.columns:
                if c.required and c.name not in row:
                    errors.append({"loc": ("body", "candidates", i, c.name), "type": "missing",
                                   "msg": "field required (in the candidate or in context)", "input": None})
            rows.append(row)
        if errors:
            raise RequestValidationError(errors[:50])
        columns = {}
        for c in self.columns:
            values = [row.get(c.name) for row in rows]
            if c.type == "string":
                values = [None if v is None else str(v) for v in values]
            elif c.type == "string_list":
                values = [None if v is None else [str(x) for x in v] for v in values]
            columns[c.name] = pa.array(values, _ARROW[c.type])
        if self.item_key and self.item_key in columns:
            ids = [str(r.get(self.item_key, i)) for i, r in enumerate(rows)]
        else:
            ids = [str(i) for i in range(len(rows))]
        return pa.table(columns), ids
