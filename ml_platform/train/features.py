"""The feature pipeline: fitted once on the train split, reused for validation, every model and serving.

cleaned columns ─▶ SQL: booleans as 0/1, rare and unseen levels as '__other__'
                ─▶ Imputer (median)            numeric
                ─▶ StringIndexer (keep)        categorical  ─▶ OneHotEncoder
                ─▶ features_tree   = numeric + level indices (nominal: trees split on categories)
                ─▶ features_scaled = numeric + one-hot, standardized (linear models, the weighted average)
"""

from __future__ import annotations

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Imputer, OneHotEncoder, SQLTransformer, StandardScaler, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import feature_pipeline_dir, train_dir
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import LINEAR_FEATURES, TREE_FEATURES

OTHER = "__other__"


class FeatureError(ValueError):
    """The training data cannot make features as the spec asks; the message names the columns."""


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def usable_features(train: DataFrame, spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """The spec's feature columns, checked against the training data: a column the spec names but the table lacks,
    or one that is entirely null in the training window, is an error that names it."""
    numeric, categorical = spec.feature_columns()
    missing = [c for c in numeric + categorical if c not in train.columns]
    if missing:
        raise FeatureError(f"{spec.name}: feature columns {missing} are not in the cleaned data "
                           f"(has {len(train.columns)} columns); fix the spec or the source")
    counts = train.agg(*[F.count(F.col(f"`{c}`")).alias(c) for c in numeric + categorical]).first().asDict()
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise FeatureError(f"{spec.name}: feature columns {empty} are entirely null in the training window; "
                           f"list them under training.exclude in the spec or fix the source")
    return numeric, categorical


def top_levels(train: DataFrame, categorical: list[str], k: int) -> dict[str, list[str]]:
    """The k most frequent levels of each categorical, in one distributed pass per column."""
    out = {}
    for c in categorical:
        rows = train.where(F.col(c).isNotNull()).groupBy(c).count().orderBy(F.desc("count"), F.asc(c)).limit(k)
        out[c] = [r[0] for r in rows.collect()]
    return out


def _prepare_sql(numeric: list[str], levels: dict[str, list[str]]) -> str:
    cols = ["*"] + [f"CAST(`{c}` AS DOUBLE) AS `__n_{c}`" for c in numeric]  # booleans become 0/1
    for c, lv in levels.items():
        keep = ", ".join(_quote(x) for x in lv) or "NULL"
        cols.append(f"CASE WHEN `{c}` IS NULL THEN NULL WHEN `{c}` IN ({keep}) THEN `{c}` ELSE '{OTHER}' END "
                    f"AS `__c_{c}`")
    return f"SELECT {', '.join(cols)} FROM __THIS__"


def fit_feature_pipeline(train: DataFrame, spec: DatasetSpec) -> PipelineModel:
    numeric, categorical = usable_features(train, spec)
    if not numeric + categorical:
        raise FeatureError(f"{spec.name}: no feature columns left after training.exclude")
    levels = top_levels(train, categorical, spec.training.max_categories)
    stages = [SQLTransformer(statement=_prepare_sql(numeric, levels))]
    imputed = [f"__i_{c}" for c in numeric]
    if numeric:
        stages.append(Imputer(inputCols=[f"__n_{c}" for c in numeric], outputCols=imputed, strategy="median"))
    idx = [f"__x_{c}" for c in categorical]
    ohe = [f"__o_{c}" for c in categorical]
    if categorical:
        # handleInvalid=keep: nulls and levels never seen in training get their own index, never an error
        stages.append(StringIndexer(inputCols=[f"__c_{c}" for c in categorical], outputCols=idx,
                                    handleInvalid="keep", stringOrderType="frequencyDesc"))
        stages.append(OneHotEncoder(inputCols=idx, outputCols=ohe, handleInvalid="keep", dropLast=False))
    stages += [
        VectorAssembler(inputCols=imputed + idx, outputCol=TREE_FEATURES),
        VectorAssembler(inputCols=imputed + ohe, outputCol="__features_raw"),
        StandardScaler(inputCol="__features_raw", outputCol=LINEAR_FEATURES, withMean=False, withStd=True),
    ]
    return Pipeline(stages=stages).fit(train)


def build_feature_pipeline(spark, store: Store, spec: DatasetSpec, version: str) -> dict:
    """Fit on the version's train split and save beside it; returns what the asset shows."""
    train = lake.read(spark, store.uri(train_dir(spec, version)))
    model = fit_feature_pipeline(train, spec)
    path = store.uri(feature_pipeline_dir(spec, version))
    model.write().overwrite().save(path)
    return feature_summary(model, spec) | {"path": path, "version": version}


def feature_summary(model: PipelineModel, spec: DatasetSpec) -> dict:
    numeric, categorical = spec.feature_columns()
    levels = {}
    for st in model.stages:
        if hasattr(st, "labelsArray"):
            levels = {c: len(lv) for c, lv in zip(categorical, st.labelsArray, strict=False)}
    return {"numeric": numeric, "categorical": categorical, "levels": levels,
            "stages": [type(s).__name__ for s in model.stages]}
