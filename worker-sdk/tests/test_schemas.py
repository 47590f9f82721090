"""Action schemas as a Worker declares them (Worker(schemas=...)): checked when it is made, with
a clear SettingsError, and kept as the canonical text it publishes (no Redis here: the
end-to-end test, integration-tests/test_edge_validation.py, runs the publishing)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsq_worker import Context, SettingsError, Worker

TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


async def send(ctx: Context, data: Any) -> None:
    return None


def test_a_schema_is_kept_as_canonical_text_and_named_in_the_worker() -> None:
    worker = Worker(actions={"chat.send": send, "other": send}, schemas={"chat.send": TEXT})
    assert worker.schemas == {"chat.send": json.dumps(TEXT, sort_keys=True, separators=(",", ":"))}
    # A default handler takes any action: a schema may name one without a handler of its own.
    assert Worker(default=send, schemas={"anything": TEXT}).schemas.keys() == {"anything"}


def test_a_model_is_turned_into_its_json_schema_without_importing_pydantic() -> None:
    class Model:  # what the SDK looks for: a model_json_schema() (pydantic's BaseModel has it)
        @classmethod
        def model_json_schema(cls) -> dict[str, Any]:
            return TEXT

    assert (
        Worker(actions={"a": send}, schemas={"a": Model}).schemas["a"]
        == Worker(actions={"a": send}, schemas={"a": TEXT}).schemas["a"]
    )


def test_a_pydantic_model_gives_a_schema_the_gateways_compile() -> None:
    pydantic = pytest.importorskip("pydantic")
    fastjsonschema = pytest.importorskip("fastjsonschema")

    class Item(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        name: str

    class Order(pydantic.BaseModel):  # type: ignore[misc,name-defined]
        items: list[Item]
        note: str | None = None

    text = Worker(actions={"order": send}, schemas={"order": Order}).schemas["order"]
    validate = fastjsonschema.compile(json.loads(text))  # its $refs point to #/$defs/...
    validate({"items": [{"name": "tea"}]})
    with pytest.raises(fastjsonschema.JsonSchemaValueException) as caught:
        validate({"items": [{"name": 1}]})
    assert caught.value.name == "data.items[0].name"


@pytest.mark.parametrize(
    ("schemas", "message"),
    [
        ({"nope": TEXT}, "schemas['nope']: this worker has no handler for that action"),
        ({"$ping": TEXT}, "schemas: action must be"),
        ({"a": "{}"}, "schemas['a']: declare a JSON Schema"),
        ({"a": {"enum": [b"bytes"]}}, "schemas['a']: a schema must be JSON"),
        ({"a": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}, "draft-04, -06 or -07"),
        ({"a": {"$ref": "http://example.com/s.json"}}, "may only point inside the schema"),
        ({"a": {"type": "strnig"}}, "schemas['a']: not a schema the gateways can compile"),
        ({"a": {"type": "string", "pattern": "("}}, "not a schema the gateways can compile"),
    ],
)
def test_a_schema_that_cannot_be_published_is_refused_when_the_worker_is_made(
    schemas: dict[str, Any], message: str
) -> None:
    if "compile" in message:
        pytest.importorskip("fastjsonschema")  # checked only when it is installed
    with pytest.raises(SettingsError) as caught:
        Worker(actions={"a": send}, schemas=schemas)
    assert message in str(caught.value)
