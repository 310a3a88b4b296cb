import duckdb
import pytest

from atlas.errors import InvalidKeyError
from atlas.keys import ModelKey, quant_label, step_of
from atlas.store import read_sql, sql_dir, sql_files

KEYS = [
    ("pythia-410m@step143000", ModelKey("pythia", "410m", checkpoint="step143000")),
    ("pythia-deduped-1.4b/s3@step1000",
     ModelKey("pythia-deduped", "1.4b", seed=3, checkpoint="step1000")),
    ("llama-2-7b+bnb-nf4", ModelKey("llama-2", "7b", quant="bnb-nf4")),
    ("smollm2-135m+gguf-q4_1#12", ModelKey("smollm2", "135m", quant="gguf-q4_1", layer=12)),
    ("tiny-s/s0+gptq-4bit-g128#0@main", ModelKey("tiny", "s", 0, "gptq-4bit-g128", 0, "main")),
]


@pytest.mark.parametrize(("text", "key"), KEYS)
def test_parse_and_format_round_trip(text, key):
    assert ModelKey.parse(text) == key
    assert str(key) == text


@pytest.mark.parametrize(("text", "key"), KEYS)
def test_sql_parser_agrees_with_python(text, key):
    con = duckdb.connect()
    for name in ("schema.sql", "views.sql", "macros.sql"):  # macros.sql calls views.sql's
        con.execute(read_sql(name))
    parsed = con.execute("SELECT parse_key(?)", [text]).fetchone()[0]
    assert parsed["family"] == key.family and parsed["size"] == key.size
    assert parsed["seed"] == ("" if key.seed is None else str(key.seed))
    assert parsed["quant"] == (key.quant or "")
    assert parsed["layer"] == ("" if key.layer is None else str(key.layer))
    assert parsed["checkpoint"] == (key.checkpoint or "")


def test_every_constant_the_sql_names_is_filled_in():
    """parse_key and size_value take the key grammar and the size labels from atlas.keys (and
    the schema its part and sketch widths from atlas.store), written in as the SQL is read:
    nothing is left unfilled, no file keeps a copy of its own."""
    for name in sql_files():
        assert "{{" not in read_sql(name), name
    assert "{{KEY_PATTERN}}" in (sql_dir() / "macros.sql").read_text(encoding="utf-8")
    assert "{{SIZE_PATTERN}}" in (sql_dir() / "queries.sql").read_text(encoding="utf-8")


@pytest.mark.parametrize("bad", ["pythia", "pythia-", "-410m", "py thia-1b", "a-b@", "a-b/sx"])
def test_unparseable_keys_explain_the_grammar(bad):
    with pytest.raises(InvalidKeyError, match="FAMILY-SIZE"):
        ModelKey.parse(bad)


def test_field_validation_names_the_field():
    with pytest.raises(InvalidKeyError, match="size"):
        ModelKey("pythia", "70m-deduped")
    with pytest.raises(InvalidKeyError, match="seed"):
        ModelKey("pythia", "70m", seed=-1)


@pytest.mark.parametrize(("label", "step"), [("step1000", 1000), ("0", 0), ("main", None),
                                             ("ckpt-20", 20), (None, None)])
def test_step_of(label, step):
    assert step_of(label) == step


@pytest.mark.parametrize("label", [None, "", "none", "None", " NONE "])
def test_none_and_empty_quant_mean_unquantized(label):
    assert quant_label(label) is None
    assert ModelKey("pythia", "70m", quant=label) == ModelKey("pythia", "70m")
    assert str(ModelKey("pythia", "70m", quant=label)) == "pythia-70m"


def test_none_quant_in_a_key_string_is_the_unquantized_variant(db):
    assert ModelKey.parse("pythia-70m+none@step1") == ModelKey("pythia", "70m",
                                                               checkpoint="step1")
    assert quant_label("int8") == "int8"
    stored = db.store.textset("eval")
    for quant in (None, "int8"):
        db.store.write_vector(ModelKey("pythia", "70m", quant=quant),
                              textset_id=stored.textset_id,
                              loglik=[-1.0] * stored.n_texts, n_tokens=None, n_truncated=0,
                              config_id="c", provenance={})
    assert db.resolve("pythia-70m+none") == "pythia-70m"  # SQL resolve_key agrees
    assert db.resolve("pythia-70m+int8") == "pythia-70m+int8"


def test_listed_keys_match_a_shorthand_by_the_rule_of_stored_ones(db):
    """Keys not stored yet (those written in the same import) match a shorthand by the SQL
    rule resolve_key applies to stored variants: unset fields are wildcards, +none is
    unquantized, a seed is a number."""
    listed = ["pythia-70m/s1+int8#3@step10", "pythia-70m/s2@step10", "pythia-70m@step10",
              "pythia-160m"]

    def matches(shorthand: str) -> list[str]:
        return sorted(db.sql("SELECT key FROM listed_key_matches(?, ?::VARCHAR[])",
                             [shorthand, listed])["key"].to_list())

    assert matches("pythia-70m") == sorted(listed[:3])
    assert matches("pythia-70m/s1@step10") == [listed[0]]
    assert matches("pythia-70m/s01") == [listed[0]]
    assert matches("pythia-70m#3") == [listed[0]]
    assert matches("pythia-70m+none@step10") == sorted(listed[1:3])
    assert matches("pythia-70m/s2") == [listed[1]]
    assert matches("pythia-160m") == [listed[3]]
    assert matches("pythia-1b") == []
