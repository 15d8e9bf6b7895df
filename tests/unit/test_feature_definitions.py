"""Feature definitions: the example repository loads and its transforms run on its generated
sources; broken definitions are refused with messages naming the definition and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from parity.errors import ConfigError, InvalidInput
from parity.features import example
from parity.features.definitions import (
    Entity,
    FeatureRepository,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    OnDemandFeatureView,
    RequestSource,
    apply_transform,
)

REPO = Path(__file__).resolve().parents[2] / "configs" / "features" / "example_repo.py"

user = Entity("user", join_keys=(Field("user_id", "int64"),))
SRC = FileSource("/nowhere/x.parquet", created_timestamp_field="created_timestamp")


A_FLOAT = (Field("a", "float64"),)


def view(name="v", entities=("user",), schema=A_FLOAT, transform=None, inputs=None):
    return FeatureView(name=name, entities=entities, source=SRC, schema=schema, transform=transform, inputs=inputs)


# -- the example repository ---------------------------------------------------------------------


def test_example_repo_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_EXAMPLE_FEATURE_DATA", str(tmp_path))
    repo = FeatureRepository.load(REPO)
    assert set(repo.entities) == {"user", "merchant"}
    assert repo.entities["merchant"].key_names == ("merchant_id",)
    assert set(repo.views) == {"user_profile", "merchant_profile"}
    assert set(repo.request_sources) == {"transaction"}
    assert set(repo.on_demand) == {"transaction_features"}
    assert set(repo.services) == {"fraud_detection", "merchant_risk", "account_snapshot", "user_spend"}
    assert repo.views["user_profile"].source.path == str(tmp_path / "users.parquet")
    assert repo.views["merchant_profile"].source.created_timestamp_field == "created_timestamp"
    refs = repo.resolve("fraud_detection")
    assert refs[:5] == [("user_profile", n) for n in repo.views["user_profile"].feature_names]
    assert refs[-5:] == [("transaction_features", n) for n in repo.on_demand["transaction_features"].feature_names]
    assert repo.services["merchant_risk"].on_missing == "default"
    assert repo.field("user_profile", "avg_amount_z").dtype == "float32"


def test_example_sources_are_deterministic_and_feed_the_transforms(tmp_path):
    a = example.generate(tmp_path / "a", seed=3, n_users=30, n_merchants=10, n_transactions=100)
    b = example.generate(tmp_path / "b", seed=3, n_users=30, n_merchants=10, n_transactions=100)
    c = example.generate(tmp_path / "c", seed=4, n_users=30, n_merchants=10, n_transactions=100)
    for name in ("users", "merchants", "transactions"):
        ta, tb = pq.read_table(a[name]), pq.read_table(b[name])
        assert ta.schema.equals(tb.schema) and ta.to_pandas().equals(tb.to_pandas())  # NaN == NaN here
        assert str(ta.schema.field("event_timestamp").type) == "timestamp[us, tz=UTC]"
        if name != "transactions":
            assert str(ta.schema.field("created_timestamp").type) == "timestamp[us, tz=UTC]"
    assert not pq.read_table(a["users"]).to_pandas().equals(pq.read_table(c["users"]).to_pandas())

    repo = FeatureRepository.load(REPO)
    for vname, table in (("user_profile", "users"), ("merchant_profile", "merchants")):
        v = repo.views[vname]
        t = pq.read_table(a[table])
        keys = {k for e in v.entities for k in repo.entities[e].key_names}
        assert keys | {"event_timestamp", "created_timestamp"} | set(v.input_names) <= set(t.column_names)
        cols = {c: t[c].to_numpy(zero_copy_only=False) for c in v.input_names}
        out = apply_transform(v.name, v.transform, cols, v.schema, t.num_rows)
        assert list(out) == list(v.feature_names)
    # corrections: some snapshots repeat an entity's event time with a later created time
    users = pq.read_table(a["users"]).to_pandas()
    assert users.duplicated(["user_id", "event_timestamp"]).any()


def test_example_cli_writes_the_sources(tmp_path, capsys):
    assert example.main([str(tmp_path), "--users", "5", "--merchants", "3", "--transactions", "10"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merchants.parquet", "transactions.parquet", "users.parquet"]
    assert pq.read_table(tmp_path / "transactions.parquet").num_rows == 10


# -- validation errors ------------------------------------------------------------------------------


def test_unknown_entity():
    with pytest.raises(ConfigError) as e:
        FeatureRepository([user, view("spend", entities=("customer",))])
    msg = str(e.value)
    assert "feature view 'spend'" in msg and "unknown entity 'customer'" in msg and "['user']" in msg


def test_duplicate_feature_name():
    with pytest.raises(ConfigError) as e:
        FeatureRepository([user, view("spend", schema=(Field("a", "float64"), Field("b", "int64"), Field("a", "int32")))])
    msg = str(e.value)
    assert "feature view 'spend'" in msg and "schema" in msg and "duplicate feature name(s) ['a']" in msg


def test_feature_named_like_a_join_key():
    with pytest.raises(ConfigError, match=r"feature view 'spend': schema: feature\(s\) \['user_id'\] have the name of a join key"):
        FeatureRepository([user, view("spend", schema=(Field("user_id", "int64"),))])


def test_definition_defined_twice():
    with pytest.raises(ConfigError, match="feature view 'spend': name: is defined twice"):
        FeatureRepository([user, view("spend"), view("spend")])


def test_dtype_mismatch_from_apply_transform():
    v = view("spend", schema=(Field("z", "float32"),), transform=lambda c: {"z": c["x"] * 2.0}, inputs=("x",))
    FeatureRepository([user, v])  # valid as a definition: the dtype shows when the transform runs
    with pytest.raises(InvalidInput) as e:
        apply_transform(v.name, v.transform, {"x": np.arange(3, dtype=np.float64)}, v.schema, 3)
    msg = str(e.value)
    assert "the transform of 'spend'" in msg and "'z' as float64, but the schema declares float32" in msg


def test_transform_returning_the_wrong_length():
    v = view("spend", schema=(Field("total", "float64"),), transform=lambda c: {"total": np.array([c["x"].sum()])}, inputs=("x",))
    with pytest.raises(InvalidInput) as e:
        apply_transform(v.name, v.transform, {"x": np.ones(4)}, v.schema, 4)
    msg = str(e.value)
    assert "the transform of 'spend'" in msg and "'total' with shape [1] for 4 rows" in msg and "one value per input row" in msg


def test_transform_missing_a_feature_or_failing():
    v = view("spend", schema=(Field("a", "float64"), Field("b", "float64")), transform=lambda c: {"a": c["x"]}, inputs=("x",))
    with pytest.raises(InvalidInput, match=r"the transform of 'spend' did not return feature 'b' \(it returned \['a'\]\)"):
        apply_transform(v.name, v.transform, {"x": np.ones(2)}, v.schema, 2)
    bad = view("spend", transform=lambda c: {"a": c["missing"]}, inputs=("x",))
    with pytest.raises(InvalidInput, match="the transform of 'spend' failed: KeyError: 'missing'"):
        apply_transform(bad.name, bad.transform, {"x": np.ones(2)}, bad.schema, 2)


@pytest.mark.parametrize(
    "ref, problem",
    [
        ("nosuch:a", "'nosuch:a': unknown feature view 'nosuch'"),
        ("v:nosuch", "'v:nosuch': view 'v' has no feature 'nosuch'; its features: ['a']"),
        ("v", "'v' is not a 'view:feature' reference"),
    ],
)
def test_unknown_reference_in_a_service(ref, problem):
    with pytest.raises(ConfigError) as e:
        FeatureRepository([user, view("v"), FeatureService("model_a", features=("v:a", ref))])
    msg = str(e.value)
    assert "feature service 'model_a'" in msg and problem in msg


def test_service_defaults_and_duplicates():
    with pytest.raises(ConfigError, match=r"feature service 'm': defaults: on_missing='default' needs a default for \['v:a'\]"):
        FeatureRepository([user, view("v"), FeatureService("m", features=("v:a",), on_missing="default")])
    with pytest.raises(ConfigError, match="feature service 'm': features: v:a is listed twice"):
        FeatureRepository([user, view("v"), FeatureService("m", features=("v:*", "v:a"))])


def test_service_defaults_must_name_listed_features_and_fit_their_dtype():
    def service(defaults):
        return FeatureRepository([user, view("v"), FeatureService("m", features=("v:a",), on_missing="default", defaults=defaults)])

    with pytest.raises(ConfigError, match=r"feature service 'm': defaults: 'v:b' is not one of the service's features \['v:a'\]"):
        service({"v:a": 1.0, "v:b": 2.0})
    with pytest.raises(ConfigError, match=r"the default 'x' of 'v:a' is not a float64 value"):
        service({"v:a": "x"})
    with pytest.raises(ConfigError, match=r"the default None of 'v:a'"):
        service({"v:a": None})
    assert service({"v:a": 0.25}).services["m"].defaults == {"v:a": 0.25}
    assert service({"v:a": float("nan")}).services["m"].defaults["v:a"] != 0.0


def test_on_demand_unknown_source():
    odv = OnDemandFeatureView("odv", sources=("v", "req"), schema=(Field("y", "float64"),), transform=lambda c: c)
    with pytest.raises(ConfigError) as e:
        FeatureRepository([user, view("v"), odv])
    assert "on-demand feature view 'odv'" in str(e.value) and "unknown source 'req'" in str(e.value)
    FeatureRepository([user, view("v"), odv, RequestSource("req", schema=(Field("amount", "float64"),))])


def test_load_names_the_definition_from_a_file(tmp_path):
    p = tmp_path / "repo.py"
    p.write_text(
        textwrap.dedent(
            """
            from parity.features.definitions import Entity, FeatureView, Field, FileSource
            user = Entity("user", join_keys=(Field("user_id", "int64"),))
            spend = FeatureView("spend", entities=("usr",), source=FileSource("x.parquet"), schema=(Field("a", "float64"),))
            """
        )
    )
    with pytest.raises(ConfigError, match="feature view 'spend': entities: unknown entity 'usr'"):
        FeatureRepository.load(p)
    p.write_text("import no_such_module_xyz\n")
    with pytest.raises(ConfigError, match=rf"{p.name}: feature repository: failed to import: ModuleNotFoundError"):
        FeatureRepository.load(p)
    with pytest.raises(ConfigError, match="is not a file"):
        FeatureRepository.load(tmp_path / "missing.py")


def test_field_and_definition_checks():
    with pytest.raises(ConfigError, match="field 'a': dtype: 'float16' is not one of"):
        Field("a", "float16")
    with pytest.raises(ConfigError, match="entity 'user': join_keys.user_id: key dtype must be one of"):
        Entity("user", join_keys=(Field("user_id", "float64"),))
    with pytest.raises(ConfigError, match="feature view 'v': ttl_seconds: must be >= 0"):
        FeatureView("v", entities=("user",), source=SRC, schema=(Field("a", "float64"),), ttl_seconds=-1)
