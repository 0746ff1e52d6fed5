from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from automl.errors import ConfigError
from automl.heads import HEADS, FFNNHead, get_head
from conftest import ROOT

# Small and quick, yet able to learn the estimator checks' blobs: the checks fit each head ~80 times.
FAST = {"ffnn": dict(hidden_layers=(8,), max_epochs=10, learning_rate=0.05, patience=3)}


def fast_head(name: str, **params):
    return get_head(name)(**{**FAST.get(name, {}), **params})


def expected_failed_checks(estimator) -> dict[str, str]:
    # Every scikit-learn check that applies passes for every head today; list any that cannot, by
    # check name with the reason, e.g. {"check_sample_weights_list": "fit takes no sample_weight"}.
    return {}


@parametrize_with_checks([fast_head(name) for name in HEADS.names()],
                         expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        # saga and libsvm stop at max_iter on some checks' tiny data sets; convergence is not checked here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


PUBLISHED = ("ffnn", "logreg-elasticnet", "svc-nystroem", "svc-rbf")


def test_registry_and_lookup():
    assert set(PUBLISHED) <= set(HEADS.names())
    assert get_head("svc_rbf") is get_head("SVC-RBF") is HEADS.get("svc-rbf")
    with pytest.raises(ConfigError, match="unknown head 'mlp'; valid names: ") as err:
        get_head("mlp")
    assert all(name in str(err.value) for name in HEADS.names())


@pytest.mark.parametrize("name", HEADS.names())
def test_a_head_is_one_registered_file(name):
    head_cls = get_head(name)
    assert head_cls.name == name  # the key the CLI and recipes show is the class's own name
    assert head_cls.__module__ == f"automl.heads.{name.replace('-', '_')}"


def test_a_new_head_file_is_found_without_a_list(tmp_path):
    # One more file in the package's folder (here: on its path) is found at the first lookup.
    (tmp_path / "tiny_head.py").write_text(
        "from automl.heads._base import Head, register\n\n"
        "@register\nclass TinyHead(Head):\n    name = 'tiny-head'\n    _constraints = {}\n")
    script = ("import automl.heads as heads\n"
              f"heads.__path__.append({str(tmp_path)!r})\n"
              "print(heads.get_head('tiny_head').__name__)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "TinyHead"


@pytest.mark.parametrize("name", HEADS.names())
def test_every_parameter_has_a_constraint(name):
    head_cls = get_head(name)
    assert set(head_cls._constraints) == set(head_cls().get_params())
    head_cls()._check_params()  # the defaults satisfy them


def _data(n_classes: int, seed: int = 0):
    # One cluster per class: linearly separable, so every head (and every sampled setting) can learn it.
    X, y = make_classification(n_samples=300, n_features=32, n_informative=4, n_redundant=0,
                               n_clusters_per_class=1, n_classes=n_classes, class_sep=2.0, random_state=seed)
    return train_test_split(X, y, test_size=1 / 3, stratify=y, random_state=seed)


@pytest.fixture(scope="module")
def datasets():
    return {k: _data(k) for k in (2, 3)}


@pytest.mark.parametrize("name", HEADS.names())
def test_search_space_samples_params_that_fit_and_learn(name, datasets):
    head_cls = get_head(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen, accuracies = set(), []
    for i in range(20):
        trial = study.ask()
        params = head_cls.search_space(trial)
        assert all(key.startswith(f"{name}.") for key in trial.params), trial.params
        n_classes = 2 + i % 2
        X_train, X_test, y_train, y_test = datasets[n_classes]
        # ffnn gets 30 epochs, not 300: enough to learn here except at the smallest learning rates.
        head = fast_head(name, max_epochs=30) if name == "ffnn" else head_cls()
        head.set_params(**params)
        with warnings.catch_warnings():
            # max_iter is the study's to tune, not this test's
            warnings.simplefilter("ignore", ConvergenceWarning)
            head.fit(X_train, y_train)
        proba = head.predict_proba(X_test)
        assert proba.shape == (len(X_test), n_classes)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
        accuracy = np.mean(head.predict(X_test) == y_test)
        assert accuracy > 1 / n_classes + 0.05, (params, accuracy)  # every sample learns something
        study.tell(trial, accuracy)
        seen.add(repr(params))
        accuracies.append(accuracy - 1 / n_classes)
    assert np.mean(accuracies) > 0.3  # and most learn this easy problem well
    assert len(seen) == 20  # the space is not degenerate


@pytest.mark.parametrize("name", HEADS.names())
def test_enqueued_defaults_reproduce_the_defaults(name):
    head_cls = get_head(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(head_cls.defaults_for_trial())
    trial = study.ask()
    params = head_cls.search_space(trial)
    defaults = head_cls().get_params()
    assert params == {key: defaults[key] for key in params}
    assert trial.params == head_cls.defaults_for_trial()


@pytest.mark.parametrize("name, param, value, expected", [
    ("svc-rbf", "C", -1, r"The 'C' parameter of SvcRbfHead \(head 'svc-rbf'\) must be a float in the range "
                         r"\(0, inf\)\. Got -1 instead\."),
    ("svc-rbf", "gamma", "sometimes", "'gamma' .* must be a str among {'auto', 'scale'} or a float"),
    ("svc-nystroem", "n_components", 0, r"'n_components' parameter .* must be an int in the range \[1, inf\]"),
    ("svc-nystroem", "gamma", 0.0, "'gamma' .* must be a str among {'auto', 'scale'} or a float in the range \\(0"),
    ("logreg-elasticnet", "l1_ratio", 1.5, r"'l1_ratio' parameter .* must be a float in the range \[0, 1\]"),
    ("logreg-elasticnet", "multi_class", "auto", "'multi_class' parameter .* among {'multinomial', 'ovr'}"),
    ("ffnn", "hidden_layers", (64, 0), "'hidden_layers' parameter .* must be a tuple or list of ints >= 1"),
    ("ffnn", "dropout", 1.0, r"'dropout' parameter .* must be a float in the range \[0, 1\)\. Got 1.0"),
    ("ffnn", "batch_size", 32.0, r"'batch_size' parameter .* must be an int in the range \[1, inf\]"),
    ("ffnn", "random_state", -1, r"'random_state' .* an int in the range \[0, 4294967295\] or None"),
])
def test_bad_param_fails_in_fit_naming_the_parameter(name, param, value, expected, datasets):
    head = get_head(name)(**{param: value})  # __init__ and set_params only store
    X_train, _, y_train, _ = datasets[2]
    with pytest.raises(ConfigError, match=expected):
        head.fit(X_train, y_train)


def test_ffnn_is_deterministic_for_a_seed(datasets):
    X_train, X_test, y_train, _ = datasets[3]
    head = FFNNHead(hidden_layers=(32, 32), dropout=0.2, max_epochs=20)
    first = clone(head).fit(X_train, y_train).predict_proba(X_test)
    np.testing.assert_array_equal(clone(head).fit(X_train, y_train).predict_proba(X_test), first)
    other = clone(head).set_params(random_state=1).fit(X_train, y_train).predict_proba(X_test)
    assert not np.allclose(other, first)


def test_ffnn_early_stopping_restores_the_best_epoch(datasets):
    X_train, _, y_train, _ = datasets[2]
    head = FFNNHead(hidden_layers=(64,), learning_rate=0.01, l2=0.0, max_epochs=200, patience=5)
    head.fit(X_train, y_train)
    assert head.n_iter_ < 200 and head.n_iter_ == head.best_epoch_ + 5
    # The kept weights are the best epoch's: their loss on the validation split is the curve's minimum.
    _, X_val, _, y_val = head._split(X_train, np.searchsorted(head.classes_, y_train), head.random_state)
    val_loss = -np.mean(np.log(head.predict_proba(X_val)[np.arange(len(y_val)), y_val]))
    np.testing.assert_allclose(val_loss, min(head.validation_loss_curve_), rtol=1e-4)
    assert len(head.validation_loss_curve_) == head.n_iter_
    assert [w.shape for w in head.coefs_] == [(32, 64), (64, 2)]
    assert all(w.dtype == np.float32 for w in head.coefs_ + head.intercepts_)


def test_ffnn_trains_in_float32_under_a_mixed_global_policy(datasets):
    import keras

    X_train, X_test, y_train, _ = datasets[2]
    head = FFNNHead(hidden_layers=(16,), max_epochs=5)
    expected = clone(head).fit(X_train, y_train).predict_proba(X_test)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")  # as a bfloat16 extractor build may leave it
    try:
        got = clone(head).fit(X_train, y_train).predict_proba(X_test)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"  # the head put it back
    finally:
        keras.config.set_dtype_policy(previous)
    np.testing.assert_array_equal(got, expected)


def test_ffnn_fit_leaves_numpy_global_rng_alone(datasets):
    X_train, _, y_train, _ = datasets[2]
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    FFNNHead(hidden_layers=(8,), max_epochs=2).fit(X_train, y_train)
    assert np.random.rand() == expected


def test_ffnn_validation_split_needs_two_samples_per_class():
    X = np.random.default_rng(0).normal(size=(7, 4))
    y = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match="class 2 has 1. Pass validation_fraction=0"):
        FFNNHead(hidden_layers=(4,), max_epochs=2).fit(X, y)
    head = FFNNHead(hidden_layers=(4,), max_epochs=2, validation_fraction=0.0).fit(X, y)
    assert head.n_iter_ == 2 and head.validation_loss_curve_ == []


def test_fitted_ffnn_pickles_and_predicts_without_keras(tmp_path, datasets):
    X_train, X_test, y_train, _ = datasets[3]
    head = FFNNHead(hidden_layers=(16, 16), max_epochs=10).fit(X_train, y_train)
    (tmp_path / "head.pkl").write_bytes(pickle.dumps(head))
    np.save(tmp_path / "X.npy", X_test)
    script = (
        "import pickle, sys, numpy as np\n"
        f"head = pickle.loads(open({str(tmp_path / 'head.pkl')!r}, 'rb').read())\n"
        f"X = np.load({str(tmp_path / 'X.npy')!r})\n"
        f"np.save({str(tmp_path / 'proba.npy')!r}, head.predict_proba(X))\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), head.predict_proba(X_test))


def test_import_heads_imports_no_deep_learning_framework():
    script = ("import sys, automl.heads\n"
              "print(sorted(m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("name", HEADS.names())
def test_predict_is_argmax_of_predict_proba_with_original_labels(name, datasets):
    X_train, X_test, y_train, _ = datasets[3]
    labels = np.array(["cat", "dog", "eel"])
    head = fast_head(name).fit(X_train, labels[y_train])
    assert list(head.classes_) == ["cat", "dog", "eel"] and head.n_features_in_ == 32
    proba = head.predict_proba(X_test)
    np.testing.assert_array_equal(head.predict(X_test), head.classes_[proba.argmax(axis=1)])


def test_logreg_ovr_and_no_deprecation_warning(datasets):
    X_train, X_test, y_train, y_test = datasets[3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a FutureWarning for penalty= or multi_class= would fail here
        for multi_class in ("multinomial", "ovr"):
            head = get_head("logreg-elasticnet")(multi_class=multi_class, max_iter=1000).fit(X_train, y_train)
            assert head.score(X_test, y_test) > 0.8
    assert len(head.model_.estimators_) == 3


@pytest.mark.parametrize("name", ["svc-rbf", "svc-nystroem"])
def test_svc_convergence_warning_is_not_silenced(name, datasets):
    X_train, _, y_train, _ = datasets[3]
    with pytest.warns(ConvergenceWarning):
        get_head(name)(max_iter=2).fit(X_train, y_train)


def test_svc_fit_scores_gives_calibrated_scores_and_no_model_to_save(datasets):
    X_train, X_test, y_train, y_test = datasets[3]
    head = get_head("svc-rbf")().fit_scores(X_train, y_train)
    scores = head.decision_scores(X_test)
    assert scores.shape == (len(X_test), 3) and np.mean(scores.argmax(axis=1) == y_test) > 0.8
    np.testing.assert_allclose(scores.sum(axis=1), 1.0)  # the calibrated probabilities
    with pytest.raises(ValueError, match="fitted by fit_scores.*call fit for a model"):
        head.predict_proba(X_test)
    nystroem = get_head("svc-nystroem")().fit_scores(X_train, y_train)  # its fit_scores is fit
    np.testing.assert_array_equal(nystroem.decision_scores(X_test), nystroem.predict_proba(X_test))


def test_svc_refits_answer_from_the_latest_fit(datasets):
    X_train, X_test, y_train, _ = datasets[2]
    head = get_head("svc-rbf")().fit_scores(X_train, y_train)
    head.fit(X_train[:100], y_train[:100])  # fit after fit_scores: the calibrated model answers
    np.testing.assert_array_equal(head.decision_scores(X_test), head.predict_proba(X_test))
    assert not hasattr(head, "scored_") and not hasattr(head, "train_")
    head.fit_scores(X_train, y_train)  # and fit_scores after fit leaves no stale probabilities behind
    with pytest.raises(ValueError, match="fitted by fit_scores"):
        head.predict_proba(X_test)


def test_svc_nystroem_gamma_is_svcs(datasets):
    X_train, _, y_train, _ = datasets[2]
    head = get_head("svc-nystroem")(n_components=10).fit_scores(X_train, y_train)
    Z = head.scaler_.transform(X_train)
    assert head.gamma_ == 1 / (32 * Z.var())  # SVC's "scale", on the standardised X
    assert head.nystroem_.n_components == 10 and head.nystroem_.gamma == head.gamma_
    assert head.set_params(gamma="auto").fit_scores(X_train, y_train).gamma_ == 1 / 32
    head.set_params(gamma=0.25, n_components=1000).fit_scores(X_train, y_train)
    assert head.gamma_ == 0.25 and head.nystroem_.n_components == len(X_train)  # at most the rows


def test_svc_nystroem_learns_20000_rows():
    # The size it is for (no timing asserted), with a tenth of the default components to stay quick
    # (~0.78 held-out accuracy; chance is 0.5).
    X, y = make_classification(n_samples=24_000, n_features=64, n_informative=16, n_redundant=0,
                               n_classes=2, random_state=0)
    X_train, X_test, y_train, y_test = X[:20_000], X[20_000:], y[:20_000], y[20_000:]
    head = get_head("svc-nystroem")(n_components=100).fit(X_train, y_train)
    proba = head.predict_proba(X_test)
    assert proba.shape == (len(X_test), 2) and np.mean(head.predict(X_test) == y_test) > 0.7
    np.testing.assert_array_equal(head.decision_scores(X_test), proba)  # what the search's folds score


def test_ffnn_divergence_raises_instead_of_predicting_nan(datasets):
    X_train, _, y_train, _ = datasets[2]
    with pytest.raises(ValueError, match="training diverged.*Lower learning_rate"):
        FFNNHead(hidden_layers=(64, 64), learning_rate=1e12, max_epochs=5).fit(X_train, y_train)
