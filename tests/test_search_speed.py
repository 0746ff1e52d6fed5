"""The search's speed-ups change its cost, not its answers: decision values score the folds where
the metric allows, the refit's probabilities stay Platt-calibrated, parallel folds reproduce serial
ones, stages prune on stratified subsamples, large data gets a scalable head, and the user is told
how long the rest will take. Timings live in bench/bench_search_scale.py, never here."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from automl import search
from automl.evaluate import full_proba, full_scores, metric_by_name
from automl.heads import FFNNHead, get_head
from automl.recipe import Recipe


@pytest.fixture(scope="module")
def binary():
    X, y = make_classification(n_samples=400, n_features=20, n_informative=6, flip_y=0.1, random_state=3)
    return X[:300], y[:300], X[300:], y[300:]


def test_the_search_scores_an_svc_fold_as_the_saved_model_predicts(binary):
    X, y, X_val, y_val = binary
    y_imbalanced = np.where(X[:, 0] > 0.7, 1, 0)  # about a quarter positive: Platt's threshold matters
    y_val_imbalanced = np.where(X_val[:, 0] > 0.7, 1, 0)
    for labels, val in ((y, y_val), (y_imbalanced, y_val_imbalanced)):
        saved = get_head("svc-rbf")(C=3.0).fit(X, labels)  # the refit: libsvm's kernel, Platt folds
        scored = get_head("svc-rbf")(C=3.0).fit_scores(X, labels)  # the search's fold: one Gram matrix
        proba, scores = full_proba(saved, X_val, 2), full_scores(scored, X_val, 2)
        np.testing.assert_allclose(scores, proba, atol=1e-8)  # the kernel values differ in rounding only
        assert (scores.argmax(1) == proba.argmax(1)).all()
        for name in ("macro-f1", "accuracy", "balanced-accuracy"):
            assert metric_by_name(name)(val, scores) == metric_by_name(name)(val, proba)
        assert metric_by_name("roc-auc")(val, scores) == pytest.approx(metric_by_name("roc-auc")(val, proba), abs=2e-3)
    # What the search scored before: the bare SVC's decision values, threshold 0, no calibration.
    scaler = StandardScaler().fit(X)
    bare = SVC(C=3.0, tol=0.01, max_iter=1000).fit(scaler.transform(X), y_imbalanced)
    assert (bare.predict(scaler.transform(X_val)) != full_proba(saved, X_val, 2).argmax(1)).any()
    assert metric_by_name("roc-auc").reads_scores and not metric_by_name("log-loss").reads_scores
    with pytest.raises(ValueError, match="fit_scores"):
        scored.predict_proba(X_val)


def test_refit_probabilities_are_platt_calibrated_as_before(binary):
    X, y, X_val, _ = binary
    head = get_head("svc-rbf")(C=3.0, random_state=7).fit(X, y)
    scaler = StandardScaler().fit(X)
    reference = CalibratedClassifierCV(SVC(kernel="rbf", C=3.0, gamma="scale", tol=0.01, max_iter=1000),
                                       method="sigmoid", cv=StratifiedKFold(3, shuffle=True, random_state=7),
                                       ensemble=False).fit(scaler.transform(X), y)
    np.testing.assert_array_equal(head.predict_proba(X_val), reference.predict_proba(scaler.transform(X_val)))


def test_multiclass_auroc_reads_columns_as_scikit_learn_does():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 120)
    proba = rng.dirichlet(np.ones(4), 120)
    ours = metric_by_name("roc-auc")(y, proba)
    assert ours == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", labels=np.arange(4)), abs=1e-12)
    assert np.isfinite(metric_by_name("roc-auc")(y, np.log(proba) * 3 - 1))  # decision values need not sum to 1


def test_a_class_missing_from_training_is_never_predicted():
    X, y = make_classification(n_samples=90, n_features=6, n_informative=4, n_classes=3, random_state=0)
    head = get_head("svc-rbf")().fit_scores(X[y < 2], y[y < 2])
    scores = full_scores(head, X, 3)
    assert scores.shape == (90, 3) and (scores.argmax(1) != 2).all() and (scores[:, 2] < scores[:, :2].min()).all()


def test_stages_halve_over_data_size_only_where_folds_are_large():
    small = search.plan_stages([480] * 5)
    assert small == [search.Stage((0, 1)), search.Stage((2, 3, 4))]  # the one pruning point, after two folds
    large = search.plan_stages([16000, 16001, 16000, 16002, 16000])
    assert large == [search.Stage((0, 1), 1000), search.Stage((0, 1), 4000), search.Stage((0, 1)),
                     search.Stage((2, 3, 4))]
    assert search.plan_stages([100, 100]) == [search.Stage((0, 1))]


def test_subsample_is_stratified_and_seeded():
    y = np.array([0] * 900 + [1] * 100)
    train = np.arange(1000)
    rows = search.subsample(train, y, 200, seed=5)
    assert len(rows) == 200 and np.bincount(y[rows]).tolist() == [180, 20]
    assert (rows == search.subsample(train, y, 200, seed=5)).all()
    assert not (rows == search.subsample(train, y, 200, seed=6)).all()
    rare = np.array([0] * 999 + [1])
    assert 1 in rare[search.subsample(train, rare, 100, seed=0)]  # a rare class keeps its rows


def staged_data():
    # 2,600 rows: 5-fold training sides of 2,080, so every trial has a data rung (520 rows) first.
    X, y = make_classification(n_samples=2600, n_features=16, n_informative=6, flip_y=0.1, random_state=1)
    return {"e": X.astype(np.float32)}, y


def outcome(study):
    return [(t.state.name, t.value, t.params, t.intermediate_values) for t in study.trials]


def test_parallel_folds_give_the_serial_study(tmp_path):
    features, y = staged_data()
    assert search.plan_stages([2080] * 5)[0].rows == 520
    studies = [search.run_search(features, y, heads=["svc-rbf", "logreg-elasticnet"], metric="macro-f1", cv=5,
                                 seed=0, storage=f"sqlite:///{tmp_path}/{jobs}.db", name="t", n_trials=9,
                                 timeout=None, progress=False, n_jobs=jobs) for jobs in (1, 2)]
    assert outcome(studies[0]) == outcome(studies[1])
    states = [t.state.name for t in studies[0].trials]
    assert "PRUNED" in states and "COMPLETE" in states
    done = [t for t in studies[0].trials if t.state.name == "COMPLETE"]
    assert all(len(t.user_attrs["fold_scores"]) == 5 for t in done)
    assert all(t.value == pytest.approx(np.mean(t.user_attrs["fold_scores"])) for t in done)


def test_ffnn_folds_train_in_worker_processes_and_give_the_serial_study(tmp_path, monkeypatch):
    # Keras's global seed is process-wide, so ffnn folds run in parallel in worker processes, one
    # TensorFlow thread each: one worker or two, the same study.
    X, y = make_classification(n_samples=240, n_features=12, n_informative=6, flip_y=0.1, random_state=2)
    calls, real = [], search._in_workers
    monkeypatch.setattr(search, "_in_workers", lambda *a: calls.append(a[2]) or real(*a))
    studies = [search.run_search({"e": X.astype(np.float32)}, y, heads=["ffnn"], metric="accuracy", cv=3, seed=0,
                                 storage=f"sqlite:///{tmp_path}/{jobs}.db", name="t", n_trials=2, timeout=None,
                                 progress=False, n_jobs=jobs) for jobs in (1, 2)]
    assert outcome(studies[0]) == outcome(studies[1])
    assert all(t.state.name == "COMPLETE" for t in studies[0].trials)
    # Two stages a trial (folds 0-1, then fold 2), two trials; at most as many workers as a stage's folds.
    assert calls == [1] * 4 + [2] * 4


def test_worker_processes_run_apart_with_one_tensorflow_thread_and_raise_here():
    import os

    assert search._in_workers(os.getenv, [("TF_NUM_INTRAOP_THREADS",), ("TF_NUM_INTEROP_THREADS",)], 2) == ["1", "1"]
    assert os.getpid() not in search._in_workers(os.getpid, [(), ()], 2)
    with pytest.raises(ValueError, match="invalid literal"):  # a trial's failure reaches the search as itself
        search._in_workers(int, [("x",)], 2)


def test_the_legacy_search_stays_callable_for_the_benchmark(tmp_path):
    features, y = staged_data()
    study = search.run_search(features, y, heads=["logreg-elasticnet"], metric="macro-f1", cv=3, seed=0,
                              storage=f"sqlite:///{tmp_path}/l.db", name="t", n_trials=2, timeout=None,
                              progress=False, legacy=True)
    assert [sorted(t.intermediate_values) for t in study.trials] == [[0, 1, 2]] * 2  # one report per fold


def test_the_first_trials_give_an_estimate_of_the_rest(tmp_path, capsys):
    features, y = staged_data()
    search.run_search({"e": features["e"][:300]}, y[:300], heads=["logreg-elasticnet"], metric="accuracy", cv=3,
                      seed=0, storage=f"sqlite:///{tmp_path}/e.db", name="t", n_trials=5, timeout=None,
                      progress=True)
    err = capsys.readouterr().err
    assert "search: 3 trials in " in err and "the other 2 should take at most about" in err
    assert search.estimate_line(3, 9.0, None, 50.0) == "search: 3 trials in 9.0 s (3.0 s a trial); it runs until " \
                                                        "the timeout, 50 s from now"


def test_large_data_adds_the_scalable_head_unless_heads_were_named(tmp_path):
    defaults = list(Recipe.model_fields["heads"].default)
    assert search.heads_for(defaults, 10_000, explicit=False) == defaults
    assert search.heads_for(defaults, 10_001, explicit=False) == defaults + ["svc-nystroem"]
    assert search.heads_for(["ffnn"], 50_000, explicit=True) == ["ffnn"]
    # A recipe's heads are explicit when given, and stay so (or not) through command-line overrides.
    assert "heads" not in Recipe.from_flags(data=str(tmp_path)).with_overrides(trials=3).model_fields_set
    assert "heads" in Recipe.from_flags(data=str(tmp_path), heads=["ffnn"]).with_overrides(trials=3).model_fields_set


def test_the_scalable_head_searches_20k_rows_in_seconds(tmp_path):
    X, y = make_classification(n_samples=20_000, n_features=64, n_informative=12, flip_y=0.05, random_state=2)
    heads = search.heads_for(["logreg-elasticnet"], 20_000, explicit=False)
    assert heads == ["logreg-elasticnet", "svc-nystroem"]
    study = search.run_search({"e": X.astype(np.float32)}, y, heads=["svc-nystroem"], metric="accuracy", cv=3,
                              seed=0, storage=f"sqlite:///{tmp_path}/n.db", name="t", n_trials=2, timeout=None,
                              progress=False)
    best = search.best_trial(study)
    assert best.params["head"] == "svc-nystroem" and best.value > 0.8
    assert len(best.intermediate_values) == 3  # rungs of 833 and 3,333 rows, then two folds in full


def test_ffnn_epochs_are_capped_in_rows_and_unchanged_below_the_cap():
    X, y = make_classification(n_samples=300, n_features=10, random_state=0)
    small = dict(hidden_layers=(8,), max_epochs=4, validation_fraction=0.0, batch_size=32)
    below = FFNNHead(epoch_rows=300, **small).fit(X, y)
    uncapped = FFNNHead(epoch_rows=None, **small).fit(X, y)
    for a, b in zip(below.coefs_, uncapped.coefs_):
        np.testing.assert_array_equal(a, b)
    capped = FFNNHead(epoch_rows=64, **small).fit(X, y)  # 4 epochs of 2 batches: far fewer steps
    assert capped.n_iter_ == 4 and not np.array_equal(capped.coefs_[0], uncapped.coefs_[0])


def test_svc_scores_from_its_gram_matrix_are_the_refits_probabilities(binary, monkeypatch):
    X, y, X_val, _ = binary
    from automl.heads import svc_rbf

    for gamma in ("scale", "auto", 3e-3):
        exact = get_head("svc-rbf")(gamma=gamma).fit(X, y)  # libsvm's kernel, as the refit
        gram = get_head("svc-rbf")(gamma=gamma).fit_scores(X, y)
        assert gram.svc_.kernel == "precomputed"
        np.testing.assert_allclose(gram.decision_scores(X_val), exact.predict_proba(X_val), atol=1e-8)
    monkeypatch.setattr(svc_rbf, "gram_budget", lambda: 100 ** 2 * svc_rbf.GRAM_BYTES_PER_CELL)
    head = get_head("svc-rbf")().fit_scores(X, y)  # a fold too large for the budget: fit_scores is fit
    assert "calibrated_" in head.__dict__ and "scored_" not in head.__dict__
    np.testing.assert_array_equal(head.decision_scores(X_val), head.predict_proba(X_val))


def test_svc_fold_scores_equal_the_refits_probabilities_with_three_classes():
    X, y = make_classification(n_samples=330, n_features=12, n_informative=6, n_classes=3, flip_y=0.1,
                               random_state=5)
    X_val = X[300:]
    exact = get_head("svc-rbf")(C=30.0).fit(X[:300], y[:300])
    gram = get_head("svc-rbf")(C=30.0).fit_scores(X[:300], y[:300])
    np.testing.assert_allclose(gram.decision_scores(X_val), exact.predict_proba(X_val), atol=1e-8)


def test_the_gram_kernel_is_built_in_blocks_within_a_memory_budget(monkeypatch):
    from sklearn.metrics.pairwise import euclidean_distances

    from automl.heads import svc_rbf

    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((50, 6)), rng.standard_normal((30, 6))
    monkeypatch.setattr(svc_rbf, "GRAM_BLOCK_ROWS", 7)  # 8 blocks, the last of one row
    for other in (B, A):
        expected = euclidean_distances(A, other, squared=True)
        np.testing.assert_allclose(svc_rbf.squared_distances(A, other), expected, rtol=1e-10, atol=1e-10)
    assert 0 < svc_rbf.available_memory() and svc_rbf.gram_budget() == svc_rbf.gram_budget()

    # Threads holding the budget wait for one another: never more than the budget held at once.
    monkeypatch.setattr(svc_rbf, "gram_budget", lambda: 10)
    held, peak, lock = [0], [0], threading.Lock()

    def hold(n):
        with svc_rbf._reserved(n):
            with lock:
                held[0] += n
                peak[0] = max(peak[0], held[0])
            time.sleep(0.02)
            with lock:
                held[0] -= n

    threads = [threading.Thread(target=hold, args=(n,)) for n in (6, 6, 4, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak[0] <= 10 and svc_rbf._budget_held == 0 and not any(t.is_alive() for t in threads)
