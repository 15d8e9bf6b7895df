"""The online codec's block decoder and `build_result` against an obviously-correct per-blob
reference (struct, one value at a time), over random schemas and random mixes of present, null,
expired, missing and unreadable blobs; and the fast path (every entity found) against the general
path (some not found) on the same rows: identical bits, nulls, statuses and ages."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest

from parity.features.definitions import DTYPES, FeatureView, Field, FileSource
from parity.features.online import codec
from parity.features.online.base import Status, build_result, ttl_us

S = 1_000_000_000
NOW = 1_700_000_000 * S + 123_456
DT = list(DTYPES)  # bool int32 int64 float32 float64 string
_FMT = {"bool": "<B", "int32": "<i", "int64": "<q", "float32": "<f", "float64": "<d", "string": "<I"}
_NULL_BITS = {"float32": np.float32(np.nan).tobytes(), "float64": np.float64(np.nan).tobytes()}


def null_value(d: str):
    """What a column holds under a null: NaN's bits, 0, False or None."""
    return _NULL_BITS.get(d, None if d == "string" else (False if d == "bool" else 0))


def make_view(schema, ttl=0.0, name="v"):
    return FeatureView(name, ("user",), FileSource("unused.parquet"), tuple(Field(n, d) for n, d in schema), ttl_seconds=ttl)


# ---------------------------------------------------------------- the reference


def ref_row(schema, blob):
    """(event_ts, created_ts, [(value, null)] per feature) or None (not found), per the module
    docstring of `codec`, parsed byte by byte."""
    nb = (len(schema) + 7) // 8
    slots = sum(struct.calcsize(_FMT[d]) for _, d in schema)
    size = 21 + nb + slots
    if blob is None or len(blob) < size or blob[0] != 1:
        return None
    fp = zlib.crc32(",".join(f"{n}:{d}" for n, d in schema).encode())
    if struct.unpack_from("<I", blob, 17)[0] != fp:
        return None
    ev, cr = struct.unpack_from("<qq", blob, 1)
    off, text = 21 + nb, size
    out = []
    for i, (_, d) in enumerate(schema):
        null = bool(blob[21 + i // 8] >> (i % 8) & 1)
        w = struct.calcsize(_FMT[d])
        raw = blob[off : off + w]
        off += w
        if d == "string":
            n = struct.unpack("<I", raw)[0]
            value = None if null else blob[text : text + n].decode("utf-8")
            text += n
        elif null:
            value = _NULL_BITS.get(d, 0 if d != "bool" else False)
        elif d == "bool":
            value = raw[0] != 0
        elif d.startswith("float"):
            value = raw  # the bits
        else:
            value = struct.unpack(_FMT[d], raw)[0]
        out.append((value, null))
    return ev, cr, out


def assert_matches_reference(view, blobs, now, result):
    schema = [(f.name, f.dtype) for f in view.schema]
    ttl = ttl_us(view)
    for j, blob in enumerate(blobs):
        ref = ref_row(schema, blob)
        where = f"row {j}"
        if ref is None:
            assert result.status[j] == Status.NOT_FOUND, where
            assert result.age_ns[j] == -1 and result.event_ts[j] == 0 and result.created_ts[j] == 0, where
            expected = [(null_value(d), True) for _, d in schema]
        else:
            ev, cr, expected = ref
            assert (result.event_ts[j], result.created_ts[j]) == (ev, cr), where
            assert result.age_ns[j] == now - ev, where
            if ttl > 0 and ev // 1000 < now // 1000 - ttl:
                assert result.status[j] == Status.EXPIRED, where
                expected = [(null_value(d), True) for _, d in schema]
            else:
                assert result.status[j] == Status.PRESENT, where
        for (name, d), (value, null) in zip(schema, expected):
            col = result.values[name]
            assert col.dtype == (object if d == "string" else DTYPES[d]), name
            assert bool(result.nulls[name][j]) is null, (where, name)
            got = col[j]
            if d.startswith("float"):
                assert got.tobytes() == value, (where, name)
            else:
                assert got == value, (where, name)
                if d == "string":
                    assert got is None if value is None else isinstance(got, str)
    assert result.status.dtype == np.int8 and result.age_ns.dtype == np.int64


# ---------------------------------------------------------------- random data


def random_schema(rng: random.Random):
    n = rng.choice([1, 2, 3, 7, 8, 9, 17, 50])
    kinds = rng.choice([DT, ["float32"], ["float64", "int64"], ["bool", "int32"], ["string"], ["string", "float32"]])
    return [(f"f{i}", rng.choice(kinds)) for i in range(n)]


def random_column(rng: random.Random, d: str, rows: int):
    nrng = np.random.default_rng(rng.randrange(2**32))
    if d == "string":
        pool = ["", "a", "héllo", "日本語 🙂", "x" * 300]
        values = np.array([rng.choice(pool) for _ in range(rows)], dtype=object)
    elif d == "bool":
        values = nrng.integers(0, 2, rows).astype(bool)
    elif d.startswith("int"):
        info = np.iinfo(DTYPES[d])
        values = nrng.integers(info.min, info.max, rows, dtype=DTYPES[d], endpoint=True)
    else:
        values = nrng.standard_normal(rows).astype(DTYPES[d])
        if rows:
            specials = np.array([np.nan, -0.0, np.inf, -np.inf], dtype=DTYPES[d])
            values[nrng.integers(0, rows, max(1, rows // 5))] = nrng.choice(specials, max(1, rows // 5))
    mask = nrng.random(rows) < rng.choice([0.0, 0.0, 0.1, 0.5])
    return np.ma.MaskedArray(values, mask=mask)


def random_blobs(rng: random.Random, view, rows: int, damaged: bool):
    schema = [(f.name, f.dtype) for f in view.schema]
    cols = {n: random_column(rng, d, rows) for n, d in schema}
    ages = [0, 1, 5 * S, 10 * S, 10 * S + 999, 10 * S + 1000, 3600 * S, -S]
    ev = np.array([NOW - rng.choice(ages) for _ in range(rows)], dtype=np.int64)
    cr = np.array([rng.randrange(-(2**63), 2**63) for _ in range(rows)], dtype=np.int64)
    blobs = codec.encode(view, cols, ev, cr, rows)
    if damaged:
        for j in range(rows):
            what = rng.choice(["ok", "ok", "none", "version", "fingerprint", "short", "trailing", "foreign"])
            b = bytearray(blobs[j])
            if what == "none":
                blobs[j] = None
                continue
            if what == "version":
                b[0] = 2
            elif what == "fingerprint":
                b[18] ^= 0x40
            elif what == "short":
                b = b[: codec.layout(view).fixed_size - 1]
            elif what == "trailing":
                b += b"junk"
            elif what == "foreign":  # set null bits over non-zero slots; a bool slot of 2
                lay = codec.layout(view)
                b[21] |= 0b101
                for i, d in enumerate(lay.dtypes):
                    off = lay.fixed.fields[f"f{i}"][1]
                    if d == "bool":
                        b[off] = 2
                    elif d != "string":
                        b[off] = 0x11
            blobs[j] = bytes(b)
    return blobs


@pytest.mark.parametrize("seed", range(60))
def test_decode_matches_the_per_blob_reference(seed):
    rng = random.Random(seed)
    view = make_view(random_schema(rng), ttl=rng.choice([0.0, 0.0, 10.0]))
    rows = rng.choice([0, 1, 2, 5, 100])
    blobs = random_blobs(rng, view, rows, damaged=seed % 2 == 1)
    result = build_result(view, blobs, NOW)
    assert_matches_reference(view, blobs, NOW, result)
    # the dict form of `codec.decode` says the same (before the TTL: expired rows are still values there)
    d = codec.decode(view, blobs)
    assert d.found.tolist() == (result.status != Status.NOT_FOUND).tolist()
    fresh = result.status != Status.EXPIRED
    for name in view.feature_names:
        assert d.nulls[name][fresh].tolist() == result.nulls[name][fresh].tolist()
        assert d.values[name][fresh].tolist() == result.values[name][fresh].tolist() or d.values[name].dtype.kind == "f"


@pytest.mark.parametrize("seed", range(20))
def test_every_found_path_equals_the_general_path(seed):
    """The same blobs decoded with every entity found (the fast path) and with a missing entity
    and an unreadable blob mixed in (the general path): the found rows come out identical."""
    rng = random.Random(1000 + seed)
    view = make_view(random_schema(rng), ttl=rng.choice([0.0, 10.0]))
    rows = rng.choice([1, 3, 100])
    blobs = random_blobs(rng, view, rows, damaged=False)
    fast = build_result(view, blobs, NOW)
    assert fast.columns.found is None  # took the fast path
    bad = bytearray(blobs[0])
    bad[0] = 9
    mixed = [None, bytes(bad)] + blobs[:1] + blobs + [None]
    slow = build_result(view, mixed, NOW)
    assert slow.columns.found is not None
    take = np.r_[2, 3 : 3 + rows]
    want = np.r_[0, 0:rows]
    for arr in ("status", "age_ns", "event_ts", "created_ts"):
        assert getattr(slow, arr)[take].tolist() == getattr(fast, arr)[want].tolist(), arr
    assert slow.status[[0, 1, -1]].tolist() == [Status.NOT_FOUND] * 3
    for name in view.feature_names:
        a, b = fast.values[name][want], slow.values[name][take]
        assert a.dtype == b.dtype
        if a.dtype == object:
            assert a.tolist() == b.tolist()
        else:
            assert a.tobytes() == b.tobytes(), name
        assert fast.nulls[name][want].tolist() == slow.nulls[name][take].tolist()
    # one entity at a time says the same as all of them at once
    for j in range(min(rows, 3)):
        single = build_result(view, [blobs[j]], NOW)
        assert single.status.tolist() == fast.status[[j]].tolist() and single.age_ns.tolist() == fast.age_ns[[j]].tolist()
        for name in view.feature_names:
            x, y = single.values[name], fast.values[name][[j]]
            assert x.tolist() == y.tolist() if x.dtype == object else x.tobytes() == y.tobytes()
            assert single.nulls[name].tolist() == fast.nulls[name][[j]].tolist()


def test_columns_are_separate_and_the_shared_no_null_column_is_read_only():
    view = make_view([("a", "float32"), ("b", "float32"), ("c", "int64")])
    cols = {"a": np.array([1, 2], np.float32), "b": np.array([3, 4], np.float32), "c": np.array([5, 6])}
    blobs = codec.encode(view, cols, np.array([1, 1]), np.array([0, 0]), 2)
    r = build_result(view, blobs, NOW)
    assert r.columns.null_matrix is None  # nothing null: no mask work
    assert r.nulls["a"] is r.nulls["b"] and not r.nulls["a"].flags.writeable
    with pytest.raises(ValueError):
        r.nulls["a"][0] = True
    with pytest.raises(ValueError):
        r.nulls["a"].flags.writeable = True
    r.values["a"][0] = 9  # a column is its own: writing it changes no other feature
    assert r.values["b"].tolist() == [3, 4] and r.values["c"].tolist() == [5, 6]
    assert r.values["a"].flags.c_contiguous and r.values["c"].dtype == np.int64


def test_layout_groups_features_by_dtype_once_per_schema():
    view = make_view([("a", "float32"), ("s", "string"), ("b", "float32"), ("n", "int64"), ("c", "float32")])
    lay = codec.layout(view)
    assert lay is codec.layout(view)
    assert [(g.dtype, g.names) for g in lay.groups] == [("float32", ("a", "b", "c")), ("int64", ("n",))]
    assert lay.groups[0].span is None and lay.groups[0].byte_index is not None  # not adjacent: gathered
    assert lay.groups[1].span is not None
    assert lay.lengths.names == ("s",)
    wide = codec.layout(make_view([(f"f{i}", "float32") for i in range(50)]))
    assert len(wide.groups) == 1 and wide.groups[0].span == (21 + 7, 21 + 7 + 200)


@pytest.mark.parametrize("now", [NOW, 0, -5, int(np.iinfo(np.int64).max), int(np.iinfo(np.int64).min)])
def test_one_entity_ages_and_ttl_at_the_int64_extremes_equal_the_many_entity_path(now):
    """One entity goes through Python-int arithmetic, many through numpy: the same saturated ages
    and the same statuses."""
    i64 = np.iinfo(np.int64)
    view = make_view([("a", "float64")], ttl=10.0)
    ev = np.array([i64.min, i64.max, 0, -1, NOW, NOW - 11 * S, now], dtype=np.int64)
    blobs = codec.encode(view, {"a": np.arange(len(ev), dtype=np.float64)}, ev, np.zeros(len(ev), np.int64), len(ev))
    many = build_result(view, blobs, now)
    if all(i64.min <= now - int(e) <= i64.max for e in ev):  # the reference has no saturation
        assert_matches_reference(view, blobs, now, many)
    for j, blob in enumerate(blobs):
        one = build_result(view, [blob], now)
        assert one.age_ns.tolist() == [many.age_ns[j]] and one.status.tolist() == [many.status[j]]
        assert one.age_ns[0] == min(max(now - int(ev[j]), i64.min), i64.max)
        assert one.values["a"].tobytes() == many.values["a"][[j]].tobytes() and one.nulls["a"][0] == many.nulls["a"][j]


# ---------------------------------------------------------------- straight into a model's input


@pytest.mark.parametrize("seed", range(40))
def test_direct_copy_into_a_matrix_equals_the_decoded_columns_assigned_one_by_one(seed):
    """`codec.Direct` (the request path of a model on stored features) against the general way
    (decode the columns, then assign each feature into its matrix column, as the feature stage
    does): the same bits, for random schemas, feature subsets in any order and any matrix dtype,
    told the matrix dtype or not (a one-row fill of features of the matrix's own dtype copies
    bytes); and no answer at all (None) for any batch with a missing, unreadable or null value."""
    rng = random.Random(5000 + seed)
    dtype = rng.choice([np.float32, np.float64, np.int64])
    if seed % 3 == 0:  # every feature of the matrix's dtype: the byte copy where one row is read
        schema = [(f"f{i}", np.dtype(dtype).name) for i in range(rng.choice([1, 2, 9, 40]))]
    else:
        schema = [(n, d) for n, d in random_schema(rng) if d != "string"] or [("f0", "float64")]
    view = make_view(schema)
    rows = rng.choice([1, 1, 2, 7, 64])
    numeric = list(range(len(schema)))
    k = rng.randint(1, len(numeric))
    features = rng.sample(numeric, k) if rng.random() < 0.5 else numeric[:k]  # shuffled, or a prefix in order
    extra = rng.choice([0, 0, 3])  # columns the view does not fill
    columns = rng.sample(range(k + extra), k) if rng.random() < 0.5 else list(range(k))
    blobs = random_blobs(rng, view, rows, damaged=False)
    decoded = codec.decode_columns(codec.layout(view), blobs)
    into = rng.choice([None, dtype, dtype, np.float16])  # float16: told another dtype than the matrix's
    direct = codec.Direct(codec.layout(view), features, columns, into)
    assert (direct.byte_runs is not None) == (into is dtype and all(schema[i][1] == np.dtype(dtype).name for i in features))
    complete = decoded.found is None and decoded.null_matrix is None
    got = np.full((rows, k + extra), 7, dtype=dtype)
    want = got.copy()
    with np.errstate(invalid="ignore", over="ignore"):
        ev = direct.fill(got, blobs)
    if not complete:
        assert ev is None
        return
    values = decoded.values()
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf into int64: whatever numpy's cast gives, both ways
        for i, c in zip(features, columns):
            want[:, c] = values[schema[i][0]]
    assert got.tobytes() == want.tobytes()
    assert (np.asarray(ev).tolist() if rows > 1 else [ev]) == decoded.event_ts.tolist()
    assert len(direct.runs) <= k


def damaged(blob: bytes, damage: str) -> bytes | None:
    """`blob` as a reader may find it: "gone" (no value), an unknown format "version", another
    schema's "fingerprint", one byte "short", one "trailing" byte; anything else: as it is."""
    b = bytearray(blob)
    if damage == "gone":
        return None
    if damage == "version":
        b[0] = 2
    elif damage == "fingerprint":
        b[19] ^= 1
    elif damage == "short":
        b = b[:-1]
    elif damage == "trailing":
        b += b"x"
    return bytes(b)


@pytest.mark.parametrize("damage", ["gone", "version", "fingerprint", "short", "trailing", "null"])
@pytest.mark.parametrize("rows", [1, 5])
def test_direct_copy_declines_any_batch_with_an_incomplete_blob(damage, rows):
    view = make_view([("a", "float32"), ("b", "int64"), ("c", "bool")])
    cols = {"a": np.arange(rows, dtype=np.float32), "b": np.arange(rows), "c": np.ones(rows, bool)}
    if damage == "null":
        cols["b"] = np.ma.MaskedArray(cols["b"], mask=[j == rows - 1 for j in range(rows)])
    blobs = codec.encode(view, cols, np.full(rows, NOW), np.zeros(rows, np.int64), rows)
    direct = codec.Direct(codec.layout(view), [2, 0, 1], [0, 1, 2])
    assert direct.fill(np.zeros((rows, 3)), list(blobs)) is not None or damage == "null"
    blobs[-1] = damaged(blobs[-1], damage)
    assert direct.fill(np.zeros((rows, 3)), blobs) is None
    # and a bool slot holding 2 (written by another writer) reads as True, as decode has it
    ok = codec.encode(view, {k: np.ma.getdata(v) for k, v in cols.items()}, np.full(rows, NOW), np.zeros(rows, np.int64), rows)
    odd = bytearray(ok[0])
    odd[codec.layout(view).fixed.fields["f2"][1]] = 2
    m = np.zeros((1, 3))
    assert direct.fill(m, [bytes(odd)]) == NOW and m[0, 0] == 1.0


@pytest.mark.parametrize("damage", ["intact", "gone", "version", "fingerprint", "short", "trailing", "null"])
def test_a_one_row_byte_copy_declines_an_incomplete_blob_and_leaves_the_matrix_alone(damage):
    view = make_view([("a", "float32"), ("b", "float32"), ("c", "float32")])
    cols = {k: np.array([v], np.float32) for k, v in (("a", 1.5), ("b", -2.0), ("c", 3.25))}
    if damage == "null":
        cols["b"] = np.ma.MaskedArray(cols["b"], mask=[True])
    blob = codec.encode(view, cols, np.full(1, NOW), np.zeros(1, np.int64), 1)[0]
    direct = codec.Direct(codec.layout(view), [2, 0, 1], [0, 1, 2], np.float32)
    assert direct.byte_runs is not None
    m = np.full((1, 3), 9, np.float32)
    if damage == "intact":
        assert direct.fill(m, [blob]) == NOW and m.tolist() == [[3.25, 1.5, -2.0]]
        assert direct.fill(np.zeros((1, 3), np.float64), [blob]) == NOW  # another matrix dtype: the runs path
        return
    assert direct.fill(m, [damaged(blob, damage)]) is None
    assert m.tolist() == [[9, 9, 9]]


def test_direct_copy_refuses_string_features():
    view = make_view([("a", "float32"), ("s", "string")])
    with pytest.raises(ValueError):
        codec.Direct(codec.layout(view), [1], [0])


# ---------------------------------------------------------------- the Redis read command


def _hiredis_mget(prefix, requests) -> bytes:
    import hiredis

    keys = [f"{prefix}:{{{i}}}:{view}" for view, ids in requests for i in ids]
    return hiredis.pack_command(("MGET", *keys))


@pytest.mark.parametrize("seed", range(40))
def test_the_mget_command_is_byte_for_byte_what_hiredis_packs(seed):
    """`_mget_command` packs runs of equal-length ids with one join; it must give exactly the bytes
    hiredis gives for the keys -- for sequential, random, alternating and string ids, several views,
    empty views, and non-ASCII ids (which go to hiredis)."""
    from parity.features.online.base import entity_ids
    from parity.features.online.redis_store import _keys, _mget_command

    rng = random.Random(seed)
    prefix = rng.choice(["parity", "p", "parity_bench_0123456789", "a.b-c"])
    requests = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        view = rng.choice(["wide", "v", "user_profile_features"])
        kind = rng.choice(["seq", "seq", "random", "alternating", "strings", "negative", "empty", "one"])
        n = rng.choice([1, 2, 7, 100, 300])
        if kind == "seq":
            start = rng.choice([0, 5, 95, 10**6 - 50])
            keys = list(range(start, start + n))
        elif kind == "random":
            keys = [rng.randrange(0, 10 ** rng.choice([2, 6, 18])) for _ in range(n)]
        elif kind == "alternating":
            keys = [5, 50] * n
        elif kind == "negative":
            keys = [-rng.randrange(1, 10**9) for _ in range(n)]
        elif kind == "empty":
            keys = []
        elif kind == "one":
            keys = [rng.randrange(-(2**63), 2**63)]
        else:
            keys = [(rng.choice(["", "a", "a:b}{c", "ünï 🙂", "x" * rng.randrange(1, 30)]),) for _ in range(n)]
        requests.append((view, entity_ids(keys)))
    want = _hiredis_mget(prefix, requests)
    assert _mget_command(prefix, requests) == want
    assert _keys(prefix, requests) == [f"{prefix}:{{{i}}}:{view}" for view, ids in requests for i in ids]
    # the request path's one-row read of views keyed by one INT64 key: the same bytes from a template
    from parity.features.online.redis_store import RedisOnlineStore

    views = sorted({view for view, _ in requests})
    store = RedisOnlineStore.from_url(f"redis://127.0.0.1:1/0?prefix={prefix}")  # never connects
    reader = store.blob_reader([make_view([("a", "float32")], name=view) for view in views])
    for v in (0, 7, -1, rng.randrange(-(2**63), 2**63), 2**63 - 1, -(2**63)):
        assert reader.one_row(v) == _hiredis_mget(prefix, [(view, entity_ids([v])) for view in views])
    # ids that are not ASCII (never made by entity_ids, but _read does not check) go through hiredis
    odd = [("wide", ["i1", "ü2", "i3"])]
    assert _mget_command(prefix, odd) == _hiredis_mget(prefix, odd)
