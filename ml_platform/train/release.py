"""From trained base models to a served champion: stack, check, register as `challenger`, and the promotion gate.

Nothing that failed its checks becomes champion: the stack's check outcome is a tag on its registered version,
and the gate refuses a challenger whose tag is not `passed`, whatever ran before it.

With a live gate (spec serving.challenger.gate_windows N > 0 and a champion to compare with), a model the holdout
gate would promote is put under the `challenger` alias instead, served in shadow or split mode; the live-metrics
sensor decides (serve/live.challenger_verdict) and requests serving_deployment, which runs
`promote_after_live_gate`.
"""

from __future__ import annotations

import json
import math

from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import holdout_dir
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import LABEL
from ml_platform.train.explain import explain_models, importance_table
from ml_platform.train.kinds import kind
from ml_platform.train.metrics import better, curves, primary, score_column
from ml_platform.train.models import model_results
from ml_platform.train.plots import classification_plots, confusion_plot, regression_plots, reliability_plot
from ml_platform.train.registry import CHALLENGER, CHAMPION, CHECKS_TAG, Tracker
from ml_platform.train.training_set import TrainingError, training_version


def stack_checks(spec: DatasetSpec, stack: dict, base: dict[str, dict]) -> list[tuple[str, bool, bool, str]]:
    """(name, passed, blocking, description) of the served model (the stack or the member chosen in its place):
    finite predictions, the spec's metric thresholds, and never worse than the best single member on the holdout
    block; the stack itself beating every member is reported but does not block (a member is served when not)."""
    holdout = stack["holdout"]
    out = [("finite_predictions", holdout["non_finite"] == 0, True,
            f"{holdout['non_finite']} non-finite holdout predictions")]
    for name, limit in spec.training.thresholds.items():
        bound, metric = name.split("_", 1)
        value = holdout.get(metric)
        ok = value is not None and math.isfinite(value) and (value >= limit if bound == "min" else value <= limit)
        out.append((f"{name}", ok, True, f"holdout {metric} = {value:.4g}, {bound} {limit}"))
    metric, larger = primary(spec.task)
    best, best_score, served = stack["best_member"], stack["best_member_holdout"], holdout[metric]
    tol = 1e-9 * max(1.0, abs(best_score))
    ok = served >= best_score - tol if larger else served <= best_score + tol
    out.append(("not_worse_than_best_member", ok, True,
                f"served {stack['served']}: holdout {metric} {served:.4g}; best member {best} {best_score:.4g}"))
    if not kind(spec).stacks:  # clustering and recommendation serve one model: there is no stack to beat members
        out.append(("beats_base_models", True, False, f"no stack for {spec.task}: {stack['served']} is served"))
        return out
    own = stack.get("stack_holdout") or {}
    worse = [n for n, r in base.items() if metric not in own
             or not (own[metric] > r["holdout"][metric] if larger else own[metric] < r["holdout"][metric])]
    out.append(("beats_base_models", not worse, False,
                f"stack {metric} {own.get(metric, float('nan')):.4g}; not beaten: {worse}; served: {stack['served']}"
                if worse else f"stack {metric} {own[metric]:.4g} beats all {len(base)} base models"))
    return out


def diagnostics(spark, spec: DatasetSpec, stacked: PipelineModel, holdout_uri: str) -> dict[str, bytes]:
    scored = stacked.transform(lake.read(spark, holdout_uri))
    if spec.task == "regression":
        return regression_plots(scored, spec.target, "prediction", f"{spec.name} stack")
    scored = scored.withColumn("__p", score_column("probability"))
    plots = classification_plots(curves(scored, LABEL, "__p"), f"{spec.name} stack")
    # the served decisions (the stack's own threshold) against the truth: rows true class, columns predicted
    counts = {(int(r[0]), int(r[1])): r[2] for r in scored.groupBy(LABEL, "prediction").count().collect()}
    matrix = [[counts.get((t, p), 0) for p in (0, 1)] for t in (0, 1)]
    plots["confusion.png"] = confusion_plot(matrix, spec.classes or ("0", "1"), f"{spec.name} stack")
    return plots


def _examples(spark, spec: DatasetSpec, stacked: PipelineModel, holdout_uri: str):
    """A few cleaned rows as the signature's input example, and the stack's prediction for them."""
    cols = [c for c in spec.cleaned_columns if c not in (spec.target,)]
    rows = lake.read(spark, holdout_uri).limit(5)
    pred = stacked.transform(rows).select("prediction").toPandas()
    example = rows.select(*[F.col(f"`{c}`") for c in cols]).toPandas()
    for c in example.columns:  # MLflow schemas have no date type; the scorer sends ISO strings anyway
        if example[c].dtype == object and example[c].map(lambda v: hasattr(v, "isoformat")).any():
            example[c] = example[c].astype(str)
    return example, pred


def stack_and_register(spark, store: Store, tracker: Tracker, spec: DatasetSpec, version: str,
                       tags: dict[str, str]) -> dict:
    """Fit the stack on one training version's base models, explain every model, log the leaderboard, feature
    importance and plots to its parent MLflow run (found by the version's tags), register the served
    PipelineModel as a new version of `<dataset>` with alias `challenger`."""
    cur = training_version(store, spec, version)
    results = model_results(store, spec, version)
    k = kind(spec)
    stack = k.select(spark, store, spec, version, results)
    board, rows = k.leaderboard(spec, results, stack)
    checks = stack_checks(spec, stack, results)
    passed = all(ok for _, ok, blocking, _ in checks if blocking)
    stacked = PipelineModel.load(stack["path"])
    holdout_uri = store.uri(holdout_dir(spec, version))
    plots = ({"confusion.png": confusion_plot(stack["holdout"]["confusion"], spec.classes, f"{spec.name} "
                                              f"{stack['served']}")} if spec.task == "multiclass"
             else diagnostics(spark, spec, stacked, holdout_uri) if spec.task in ("regression", "classification")
             else {})
    if stack.get("reliability"):
        plots["reliability.png"] = reliability_plot(stack["reliability"], f"{spec.name} {stack['served']}")
    parent = tracker.parent_run(spec.name, cur, tags)
    for name, png in plots.items():
        tracker.log_artifact_bytes(parent, name, png)
    importance = {}
    if k.stacks:  # permutation importance of supervised models (clusters and ratings have no label to worsen)
        importance = explain_models(spark, store, spec, version, results, stacked, stack["served"])
        board += "\n\n**Feature importance** (cleaned columns)\n\n" + importance_table(importance)
    tracker.log_artifact_bytes(parent, "leaderboard.md", board)
    tracker.log_artifact_bytes(parent, "importance.json", json.dumps(importance, indent=1).encode())
    example, pred = _examples(spark, spec, stacked, holdout_uri)
    # a served challenger (shadow/split) is chosen by the gate, never by registering: failed checks must not serve
    mv = tracker.register_stack(parent, spec.name, stacked, example, pred, stack["holdout"], tags | {
        "training_version": version, "batches": ",".join(cur["batches"])[:4000], "data_hash": cur["data_hash"],
        # the Delta version of silver the training set read: `ml-platform reproduce` travels back to it
        "silver_version": str((cur.get("delta_versions") or {}).get("silver", "")),
        "served_model": stack["served"], CHECKS_TAG: "passed" if passed else "failed"},
        alias=CHALLENGER if spec.serving.challenger.mode == "off" else None)
    return stack | {"leaderboard": board, "rows": rows, "importance": importance, "checks": checks, "plots": plots,
                    "model_version": mv, "mlflow_run": tracker.run_link(parent), "training": cur,
                    "model_page": tracker.model_page(spec.name, mv)}


def promotion_gate(spark, store: Store, tracker: Tracker, spec: DatasetSpec, challenger: str | None = None) -> dict:
    """Score the challenger and the champion on the challenger's own holdout; promote the challenger only if its
    checks passed and it beats the champion by the spec's margin, or if there is no champion. `challenger` is a
    registered version (the stack this run built); by default the one the `challenger` alias points at."""
    metric, _ = primary(spec.task)
    margin = spec.training.margin
    challenger = challenger or tracker.version_for(spec.name, CHALLENGER)
    champion = tracker.version_for(spec.name, CHAMPION)
    if challenger is None:
        raise TrainingError(f"{spec.name}: no registered challenger; materialize {spec.name}/stacked_model first")
    out = {"metric": metric, "margin": margin, "challenger": challenger, "champion_before": champion,
           "model_page": tracker.model_page(spec.name)}
    tags = tracker.version_tags(spec.name, challenger)
    if tags.get(CHECKS_TAG) != "passed":
        return out | {"decision": "rejected: challenger failed its checks", "champion_after": champion,
                      "promoted": False}
    if champion == challenger:
        return out | {"decision": "unchanged: the challenger already is champion", "champion_after": champion,
                      "promoted": False}
    if "training_version" not in tags:
        raise TrainingError(f"{spec.name}: model version {challenger} has no training_version tag, so there is no "
                            f"holdout to score it on")
    judged_on = tags["training_version"]
    evaluate = kind(spec).evaluate
    ch_score = evaluate(spark, store, spec, tracker.load(spec.name, challenger), judged_on)[metric]
    out["challenger_score"] = ch_score
    if champion is None:
        decision, promote = "promoted: no champion yet", True
    else:
        cp_score = evaluate(spark, store, spec, tracker.load(spec.name, champion), judged_on)[metric]
        out["champion_score"] = cp_score
        promote = better(spec.task, ch_score, cp_score, margin)
        decision = (f"promoted: {metric} {ch_score:.4g} vs champion {cp_score:.4g} (margin {margin})" if promote
                    else f"kept champion: {metric} {ch_score:.4g} vs {cp_score:.4g} is not better by {margin}")
    live = spec.serving.challenger
    if promote and champion is not None and live.gate_windows:
        promote = False
        decision += (f"; not yet: serving as the {live.mode} challenger until its live metrics are no worse than "
                     f"the champion's over {live.gate_windows} windows")
        decision = decision.replace("promoted: ", "challenger: ", 1)
        tracker.set_alias(spec.name, CHALLENGER, challenger)
        out["challenger_serving"] = live.mode
    if promote:
        tracker.promote(spec.name, challenger)
    tracker.tag_version(spec.name, challenger, {"decision": decision, "challenger_score": ch_score,
                                                "champion_score": out.get("champion_score", "")})
    return out | {"decision": decision, "promoted": promote,
                  "champion_after": challenger if promote else champion}


def promote_after_live_gate(tracker: Tracker, spec: DatasetSpec, version: str, evidence: str) -> dict:
    """Promote the challenger `version` that passed the live gate (`evidence`: challenger_verdict's why), if the
    `challenger` alias still points at it and its checks passed. No Spark: the judging was done on live windows.
    Returns the same summary as promotion_gate."""
    metric, _ = primary(spec.task)
    champion, current = tracker.version_for(spec.name, CHAMPION), tracker.version_for(spec.name, CHALLENGER)
    out = {"metric": metric, "margin": spec.training.margin, "challenger": version, "champion_before": champion,
           "model_page": tracker.model_page(spec.name), "evidence": evidence}
    if current != str(version):
        decision = f"unchanged: the challenger alias points at {current}, not at {version}, since the gate judged"
    elif tracker.version_tags(spec.name, version).get(CHECKS_TAG) != "passed":
        decision = "rejected: challenger failed its checks"
    elif champion == str(version):
        decision = "unchanged: the challenger already is champion"
    else:
        tracker.promote(spec.name, version)
        decision = f"promoted by the live gate: {evidence}"
        tracker.tag_version(spec.name, version, {"decision": decision[:4000]})
        return out | {"decision": decision, "promoted": True, "champion_after": str(version)}
    return out | {"decision": decision, "promoted": False, "champion_after": champion}
