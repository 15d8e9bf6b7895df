"""Declared transform inputs: every path hands the transform the declared dtype, so the offline
join and the online store agree even when the source column's type differs (int64 on disk,
float64 declared); a source column that cannot become the declared dtype is refused naming the
file and the column."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parity.errors import ConfigError, InvalidInput
from parity.features.definitions import Entity, FeatureRepository, FeatureView, Field, FileSource, typed_inputs
from parity.features.materialize import materialize
from parity.features.offline import get_historical_features
from parity.features.online import open_online_store
from parity.features.retrieval import FeatureServer

T = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _halve(cols):
    x = cols["count"]
    assert x.dtype == np.float64, x.dtype  # the declared dtype, whatever the source holds
    return {"half": (x / 2.0).astype(np.float64)}


def _repo(root, column: pa.Array) -> FeatureRepository:
    table = pa.table(
        {
            "user_id": pa.array([1, 2, 3], pa.int64()),
            "event_timestamp": pa.array([T, T, T], pa.timestamp("us", tz="UTC")),
            "count": column,
        }
    )
    pq.write_table(table, root / "counts.parquet")
    user = Entity("user", [Field("user_id", "int64")])
    view = FeatureView(
        "counts", ["user"], FileSource(str(root / "counts.parquet")), [Field("half", "float64")],
        transform=_halve, inputs=[Field("count", "float64")],
    )  # fmt: skip
    return FeatureRepository([user, view])


def test_an_int_source_column_reaches_the_transform_as_the_declared_float_on_both_paths(tmp_path):
    repo = _repo(tmp_path, pa.array([3, 2**53 + 1, -7], pa.int64()))
    entity_df = pd.DataFrame({"user_id": [1, 2, 3], "event_timestamp": [pd.Timestamp(T)] * 3})
    offline = get_historical_features(repo, entity_df, ["counts:half"], output="arrow").column("half").to_numpy()
    with open_online_store(f"sqlite:///{tmp_path / 'o.db'}") as store:
        materialize(repo, store, end=T, progress=False)
        now = int(pd.Timestamp(T).value)
        online = FeatureServer(repo, store).get_online_features(["counts:half"], {"user_id": np.array([1, 2, 3])}, now_ns=now)
    assert np.array_equal(offline.view(np.uint64), online.values["counts__half"].view(np.uint64))
    assert offline[0] == 1.5 and offline[2] == -3.5


def test_a_source_column_of_another_kind_is_refused_naming_file_and_column(tmp_path):
    repo = _repo(tmp_path, pa.array(["3", "2", "1"], pa.string()))
    entity_df = pd.DataFrame({"user_id": [1], "event_timestamp": [pd.Timestamp(T)]})
    with pytest.raises(ConfigError) as info:
        get_historical_features(repo, entity_df, ["counts:half"])
    assert "counts.parquet" in info.value.message and "count" in info.value.message and "float64" in info.value.message


def test_typed_inputs_casts_within_a_kind_and_refuses_across():
    got = typed_inputs("v", {"a": np.array([1, 2], np.int32), "b": np.array([1.5], np.float32)}, (Field("a", "float64"), Field("b", "float64")))
    assert got["a"].dtype == np.float64 and got["b"].dtype == np.float64
    with pytest.raises(InvalidInput, match="'a' of 'v' is declared int64 but the values are float64"):
        typed_inputs("v", {"a": np.array([1.5])}, (Field("a", "int64"),))
    with pytest.raises(InvalidInput, match="declared float64"):
        typed_inputs("v", {"a": np.array(["x"], dtype=object)}, (Field("a", "float64"),))
    with pytest.raises(InvalidInput, match="needs input 'z'"):
        typed_inputs("v", {}, (Field("z", "int64"),))


# ---------------------------------------------------------------- `parity features materialize` refuses bad sources

_MODULE = '''
import numpy as np
from parity.features.definitions import Entity, FeatureView, Field, FileSource

user = Entity("user", [Field("user_id", "int64")])
a_good = FeatureView("a_good", ["user"], FileSource({good!r}), [Field("score", "float64")])
b_plain = FeatureView("b_plain", ["user"], FileSource({bad!r}), [Field("score", "float64")])
c_typed = FeatureView(
    "c_typed", ["user"], FileSource({typed!r}), [Field("half", "float64")],
    transform=lambda cols: {{"half": cols["count"] / 2.0}}, inputs=[Field("count", "float64")],
)
'''


def _source(path, **columns) -> str:
    table = {"user_id": pa.array([1, 2, 3], pa.int64()), "event_timestamp": pa.array([T, T, T], pa.timestamp("us", tz="UTC"))}
    table.update(columns)
    pq.write_table(pa.table(table), path)
    return str(path)


BROKEN = [
    ("bad", "score", {}),  # the plain view's feature column is missing
    ("bad", "score", {"score": pa.array(["1", "2", "3"], pa.string())}),  # ... or a string, not float64
    ("typed", "count", {}),  # the transform's input is missing
    ("typed", "count", {"count": pa.array(["1", "2", "3"], pa.string())}),  # ... or of another kind
]
BROKEN_IDS = ["missing-feature", "feature-of-wrong-dtype", "missing-transform-input", "transform-input-of-wrong-kind"]


def _materialize_cli(tmp_path, capsys, broken: str, problem: dict, views: list[str]) -> tuple[int, str, dict, FeatureRepository]:
    """`parity features materialize` (in process) of a repository of three views over three
    sources, one of them broken; (exit code, stderr, source paths, repository)."""
    from parity.cli import main

    floats = {"score": pa.array([0.5, 1.5, 2.5], pa.float64())}
    counts = {"count": pa.array([3, 2, 1], pa.int64())}
    paths = {
        "good": _source(tmp_path / "good.parquet", **floats),
        "bad": _source(tmp_path / "bad.parquet", **(problem if broken == "bad" else floats)),
        "typed": _source(tmp_path / "typed.parquet", **(problem if broken == "typed" else counts)),
    }
    module = tmp_path / "repo.py"
    module.write_text(_MODULE.format(**paths))
    argv = ["features", "materialize", "--repo", str(module), "--online-store", f"sqlite:///{tmp_path / 'online.db'}",
            "--state", str(tmp_path / "marks.json")] + (["--views", *views] if views else [])  # fmt: skip
    rc = main(argv)
    return rc, capsys.readouterr().err, paths, FeatureRepository.load(module)


def _written_views(tmp_path, repo: FeatureRepository) -> list[str]:
    with open_online_store(f"sqlite:///{tmp_path / 'online.db'}") as store:
        now = int(pd.Timestamp(T).value)
        return [n for n in sorted(repo.views) if (store.read([(repo.views[n], [1, 2, 3])], now)[0].status == 0).any()]


@pytest.mark.parametrize("broken, column, problem", BROKEN, ids=BROKEN_IDS)
def test_materialize_refuses_a_bad_source_naming_file_and_column_and_writes_nothing(tmp_path, capsys, broken, column, problem):
    view = {"bad": "b_plain", "typed": "c_typed"}[broken]
    rc, err, paths, repo = _materialize_cli(tmp_path, capsys, broken, problem, [view])
    assert rc == 2, err
    assert paths[broken] in err and f": {column}:" in err, err  # "<file> (source of feature view ...): <column>: <problem>"
    assert "Traceback" not in err
    assert _written_views(tmp_path, repo) == [] and not (tmp_path / "marks.json").exists()


@pytest.mark.parametrize("broken, column, problem", BROKEN[::2], ids=BROKEN_IDS[::2])
def test_materialize_of_all_views_writes_none_when_one_source_is_refused(tmp_path, capsys, broken, column, problem):
    """The good view 'a_good' comes first: a run that refuses a later view must not have written it
    (or saved its watermark) -- a refused run changes nothing."""
    rc, err, paths, repo = _materialize_cli(tmp_path, capsys, broken, problem, [])
    assert rc == 2 and paths[broken] in err and f": {column}:" in err, err
    assert _written_views(tmp_path, repo) == [], f"a refused materialization wrote views; its output:\n{err}"
    assert not (tmp_path / "marks.json").exists()
