"""Example feature repository: card transactions scored for fraud.

Load it with ``FeatureRepository.load("configs/features/example_repo.py")``.  Its Parquet sources
are synthetic; write them with

    python -m parity.features.example configs/features/data

(or anywhere, then point ``PARITY_EXAMPLE_FEATURE_DATA`` at that directory before loading).

Every transform is built from the kernels in ``parity.kernels``, elementwise, with statistics
stored here (never computed from the rows at hand), so the offline build over whole tables and the
online path over a batch's rows give the same bits.  Transforms convert their inputs to the dtype
they expect first, so they do not depend on how a path happened to read a source column.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from parity.features.definitions import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    OnDemandFeatureView,
    RequestSource,
)
from parity.kernels import bucketize, clip, log1p, min_max_scale, stable_hash, standard_scale

DATA = Path(os.environ.get("PARITY_EXAMPLE_FEATURE_DATA", Path(__file__).resolve().parent / "data"))

# Statistics stored with the definitions (computed once, offline, from the training window).
AGE_EDGES = (18, 25, 35, 50, 65)
COUNTRY_BUCKETS = 64
CATEGORY_BUCKETS = 32
AVG_AMOUNT_MEAN, AVG_AMOUNT_STD = 45.0, 40.0
REFUND_RATE_MAX = 0.2
AMOUNT_MEAN, AMOUNT_STD = 55.0, 70.0
HOUR_EDGES = (6, 12, 18, 22)

# -- entities --------------------------------------------------------------------------------

user = Entity("user", join_keys=(Field("user_id", "int64"),))
merchant = Entity("merchant", join_keys=(Field("merchant_id", "string"),))

# -- feature views ---------------------------------------------------------------------------


def user_profile_transform(cols):
    return {
        "age_bucket": bucketize(np.asarray(cols["age"], dtype=np.int64), AGE_EDGES),
        "country_bucket": stable_hash(np.asarray(cols["country"], dtype=object), COUNTRY_BUCKETS),
        "account_age_days": clip(np.asarray(cols["signup_days"], dtype=np.float64), 0.0, 3650.0),
        "txn_count_log": log1p(np.asarray(cols["txn_count_30d"], dtype=np.int64)),
        "avg_amount_z": standard_scale(np.asarray(cols["avg_amount_30d"], dtype=np.float32), AVG_AMOUNT_MEAN, AVG_AMOUNT_STD),
    }


user_profile = FeatureView(
    name="user_profile",
    entities=("user",),
    source=FileSource(str(DATA / "users.parquet"), timestamp_field="event_timestamp", created_timestamp_field="created_timestamp"),
    schema=(
        Field("age_bucket", "int32"),
        Field("country_bucket", "int64"),
        Field("account_age_days", "float64"),
        Field("txn_count_log", "float64"),
        Field("avg_amount_z", "float32"),
    ),
    ttl_seconds=30 * 86_400.0,
    transform=user_profile_transform,
    inputs=("age", "country", "signup_days", "txn_count_30d", "avg_amount_30d"),
    description="Who the card holder is and how they usually spend.",
)


def merchant_profile_transform(cols):
    return {
        "category_bucket": stable_hash(np.asarray(cols["category"], dtype=object), CATEGORY_BUCKETS),
        "risk_score": clip(np.asarray(cols["risk_score"], dtype=np.float64), 0.0, 1.0),
        # scaled in float64, clamped into [0, 1], then stored as float32 (a cast that cannot overflow)
        "refund_rate_scaled": min_max_scale(np.asarray(cols["refund_rate"], dtype=np.float64), 0.0, REFUND_RATE_MAX, clip=True).astype(np.float32),
        "volume_log": log1p(np.asarray(cols["daily_volume"], dtype=np.float64)),
    }


merchant_profile = FeatureView(
    name="merchant_profile",
    entities=("merchant",),
    source=FileSource(str(DATA / "merchants.parquet"), timestamp_field="event_timestamp", created_timestamp_field="created_timestamp"),
    schema=(
        Field("category_bucket", "int64"),
        Field("risk_score", "float64"),
        Field("refund_rate_scaled", "float32"),
        Field("volume_log", "float64"),
    ),
    ttl_seconds=14 * 86_400.0,
    transform=merchant_profile_transform,
    inputs=("category", "risk_score", "refund_rate", "daily_volume"),
    description="The merchant's category, risk and volume.",
)

# -- request data and an on-demand view ------------------------------------------------------

transaction = RequestSource("transaction", schema=(Field("amount", "float64"), Field("hour", "int64")))


def transaction_features_transform(cols):
    amount = np.asarray(cols["transaction__amount"], dtype=np.float64)
    amount_z = standard_scale(amount, AMOUNT_MEAN, AMOUNT_STD)
    user_z = np.asarray(cols["user_profile__avg_amount_z"], dtype=np.float32).astype(np.float64)
    with np.errstate(all="ignore"):  # inf - inf is NaN, quietly, on every path
        amount_z_vs_user = amount_z - user_z  # elementwise: the same bits in any batch
    return {
        "amount_log": log1p(amount),
        "amount_z": amount_z,
        "amount_z_vs_user": amount_z_vs_user,
        "hour_bucket": bucketize(np.asarray(cols["transaction__hour"], dtype=np.int64), HOUR_EDGES),
        "risky_merchant": np.asarray(cols["merchant_profile__risk_score"], dtype=np.float64) >= 0.5,
    }


transaction_features = OnDemandFeatureView(
    name="transaction_features",
    sources=("user_profile", "merchant_profile", "transaction"),
    schema=(
        Field("amount_log", "float64"),
        Field("amount_z", "float64"),
        Field("amount_z_vs_user", "float64"),
        Field("hour_bucket", "int32"),
        Field("risky_merchant", "bool"),
    ),
    transform=transaction_features_transform,
)

# -- feature services ------------------------------------------------------------------------

fraud_detection = FeatureService(
    name="fraud_detection",
    features=(
        "user_profile:*",
        "merchant_profile:category_bucket",
        "merchant_profile:risk_score",
        "merchant_profile:refund_rate_scaled",
        "transaction_features:*",
    ),
)

merchant_risk = FeatureService(
    name="merchant_risk",
    features=("merchant_profile:risk_score", "merchant_profile:volume_log"),
    on_missing="default",
    defaults={"merchant_profile:risk_score": 0.5, "merchant_profile:volume_log": 0.0},
)

# stored features only, from both views, in an order of the model's choosing: served on Redis by
# copying each view's values straight from its blobs into the model's input
account_snapshot = FeatureService(
    name="account_snapshot",
    features=(
        "merchant_profile:volume_log",
        "user_profile:age_bucket",
        "user_profile:avg_amount_z",
        "user_profile:country_bucket",
        "merchant_profile:category_bucket",
        "user_profile:account_age_days",
    ),
    on_missing="default",
    defaults={
        "merchant_profile:volume_log": 0.0,
        "user_profile:age_bucket": -1,
        "user_profile:avg_amount_z": 0.0,
        "user_profile:country_bucket": -1,
        "merchant_profile:category_bucket": -1,
        "user_profile:account_age_days": 0.0,
    },
)

# stored features of one view keyed by the user alone, all float64 like the model's input: on Redis
# one entity's read is packed from a template and its values' bytes copied straight into the input
user_spend = FeatureService(
    name="user_spend",
    features=("user_profile:account_age_days", "user_profile:txn_count_log"),
)
