"""``ffnn``: a feed-forward ReLU network trained with Keras, predicting with NumPy.

Keras (and TensorFlow) is imported inside ``fit`` only. After training the weights are copied out as
NumPy arrays (``coefs_``, ``intercepts_``), so ``predict_proba`` is a NumPy forward pass: fast on a
few hundred rows, and a fitted head saves to a model bundle as plain arrays and predicts without Keras
installed or imported.

Early stopping watches Keras's ``val_loss`` on a stratified inner validation split
(``validation_fraction`` of the data given to ``fit``) and restores the best epoch's weights;
``validation_fraction=0`` trains for ``max_epochs`` with no split. ``l2`` has Keras's
``kernel_regularizer=l2(l2)`` meaning — ``l2 * sum(kernel**2)`` added to the loss, ``val_loss``
included — on the hidden layers' kernels; the output layer is not regularised.

An epoch is at most ``epoch_rows`` training rows: a larger training set is drawn in epochs of that
many rows (the shuffled data repeated), so ``max_epochs``, ``patience`` and the early-stopping checks
mean the same amount of training at every data size — without it a 16,000-row fold trained ~8 times
longer than a 2,000-row one before early stopping could notice anything. Up to ``epoch_rows`` rows an
epoch is one pass over the data, as it always was.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import ClassVar

import numpy as np
from sklearn.model_selection import train_test_split

from automl._imports import require
from automl.heads._base import SEED, Head, register
from automl.params import Interval

_WIDTH_RANGE = (64, 512)
_L2_RANGE = (1e-5, 1e-1)
_LR_RANGE = (1e-4, 1e-2)
_DROPOUT_RANGE = (0.0, 0.5)
_BATCH_SIZES = [32, 64, 128]


class _Layers:
    """The ``hidden_layers`` constraint: widths, a tuple or list of ints >= 1 (empty: no hidden layer)."""

    def accepts(self, value) -> bool:
        return isinstance(value, (tuple, list)) and all(Interval(int, 1).accepts(v) for v in value)

    def describe(self) -> str:
        return "a tuple or list of ints >= 1"


@register
class FFNNHead(Head):
    """A multilayer perceptron: ``hidden_layers`` ReLU layers, a softmax over the classes.

    Trained with Adam (``learning_rate``, ``batch_size``) on sparse categorical cross-entropy for at
    most ``max_epochs``, stopping after ``patience`` epochs without a better validation loss.
    ``dropout`` follows every hidden layer. ``random_state`` seeds Keras (weights, shuffling,
    dropout) and the validation split.
    """

    name = "ffnn"
    _constraints: ClassVar[dict] = {
        "hidden_layers": [_Layers()],
        "l2": [Interval(float, 0)],
        "learning_rate": [Interval(float, 0, closed="neither")],
        "batch_size": [Interval(int, 1)],
        "max_epochs": [Interval(int, 1)],
        "validation_fraction": [Interval(float, 0, 1, closed="left")],
        "patience": [Interval(int, 1)],
        "dropout": [Interval(float, 0, 1, closed="left")],
        "epoch_rows": [Interval(int, 1), None],
        "random_state": SEED,
    }
    parallel_fits = "processes"  # Keras's global seed and dtype policy are process-wide
    epoch_rows = None  # what a head saved before the parameter existed trained with (class-level default)

    def __init__(self, hidden_layers=(256, 256, 256, 256), l2=0.02, learning_rate=1e-3, batch_size=64,
                 max_epochs=300, validation_fraction=0.1, patience=20, dropout=0.0, epoch_rows=2048,
                 random_state=0):
        self.hidden_layers = hidden_layers
        self.l2 = l2
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.dropout = dropout
        self.epoch_rows = epoch_rows
        self.random_state = random_state

    def fit(self, X, y):
        X, y = self._prepare_fit(X, y)
        X = X.astype(np.float32)
        seed = self.random_state
        if seed is None:  # unseeded, as scikit-learn means it: fresh entropy
            seed = int(np.random.SeedSequence().entropy % 2**32)
        early_stopping = self.validation_fraction > 0
        if early_stopping:
            X, X_val, y, y_val = self._split(X, y, seed)

        keras, tf = _import_keras()
        with _float32_policy(keras), _keep_python_and_numpy_rng():
            keras.utils.set_random_seed(int(seed))
            # tf.data rather than NumPy arrays: Keras re-wraps arrays every epoch, which cost 3-4x
            # the training itself on these small sets (measured: ~50 ms vs ~5 ms per epoch).
            # Made after the global seed is set, so the shuffle order follows random_state.
            train = tf.data.Dataset.from_tensor_slices((X, y)).shuffle(len(y), seed=seed)
            steps = None
            if self.epoch_rows is not None and len(y) > self.epoch_rows:
                train = train.repeat()  # reshuffled on every pass; an epoch is steps batches
                steps = -(-self.epoch_rows // self.batch_size)
            train = train.batch(self.batch_size)
            model = self._build(keras, X.shape[1], len(self.classes_), steps or -(-len(y) // self.batch_size))
            validation, callbacks = None, [keras.callbacks.TerminateOnNaN()]
            if early_stopping:
                validation = tf.data.Dataset.from_tensor_slices((X_val, y_val)).batch(1024)
                callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience,
                                                               restore_best_weights=True))
            history = model.fit(train, epochs=self.max_epochs, steps_per_epoch=steps, validation_data=validation,
                                callbacks=callbacks, shuffle=False, verbose=0)  # the dataset shuffles

        weights = [layer.get_weights() for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        if not all(np.isfinite(w).all() for pair in weights for w in pair):
            raise ValueError(f"FFNNHead's training diverged: the loss became non-finite at epoch "
                             f"{len(history.history['loss'])}. Lower learning_rate "
                             f"(now {self.learning_rate}).")
        self.coefs_ = [kernel.astype(np.float32) for kernel, _ in weights]
        self.intercepts_ = [bias.astype(np.float32) for _, bias in weights]
        self.loss_curve_ = [float(v) for v in history.history["loss"]]
        self.validation_loss_curve_ = [float(v) for v in history.history.get("val_loss", [])]
        self.n_iter_ = len(self.loss_curve_)  # epochs run
        # The epoch whose weights were kept: EarlyStopping restores the first minimum of val_loss.
        self.best_epoch_ = int(np.argmin(self.validation_loss_curve_)) + 1 if early_stopping else self.n_iter_
        return self

    def _split(self, X, y, seed):
        counts = np.bincount(y, minlength=len(self.classes_))
        if counts.min() < 2:
            rare = self.classes_.tolist()[np.argmin(counts)]
            raise ValueError(
                f"FFNNHead holds out validation_fraction={self.validation_fraction} of the data, stratified, "
                f"for early stopping, which needs at least 2 samples of every class; class {rare!r} has "
                f"{counts.min()}. Pass validation_fraction=0 to train for max_epochs without early stopping."
            )
        # At least one validation sample per class, so the stratified split exists on small data.
        n_val = max(int(round(self.validation_fraction * len(y))), len(self.classes_))
        return train_test_split(X, y, test_size=n_val, stratify=y, random_state=seed)

    def _build(self, keras, n_features, n_classes, steps_per_epoch):
        layers = keras.layers
        reg = keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        inputs = keras.Input((n_features,), dtype="float32")
        h = inputs
        for units in self.hidden_layers:
            h = layers.Dense(int(units), activation="relu", kernel_regularizer=reg)(h)
            if self.dropout > 0:
                h = layers.Dropout(self.dropout)(h)
        logits = layers.Dense(n_classes)(h)
        model = keras.Model(inputs, logits)
        # XLA (Keras's "auto" on TensorFlow) compiles for longer than it saves on a net this small:
        # measured 1.5x slower on 2 CPU cores, 600 x 2048. Up to 32 batches per call of the compiled
        # step spares Keras's per-batch Python work (about 2x faster on 4,000 x 1024, the same weights);
        # never more than an epoch's batches, where Keras's results change.
        model.compile(optimizer=keras.optimizers.Adam(self.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False,
                      steps_per_execution=max(1, min(32, steps_per_epoch)))
        return model

    def predict_proba(self, X) -> np.ndarray:
        # float64, so a row's probabilities do not depend on which other rows share the batch.
        h = self._prepare_predict(X).astype(np.float64)
        for W, b in zip(self.coefs_[:-1], self.intercepts_[:-1]):
            h = np.maximum(h @ W + b, 0.0)
        logits = h @ self.coefs_[-1] + self.intercepts_[-1]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    @staticmethod
    def search_space(trial) -> dict:
        depth = trial.suggest_int("ffnn.depth", 1, 4)
        width = trial.suggest_int("ffnn.width", *_WIDTH_RANGE, log=True)
        return {
            "hidden_layers": (width,) * depth,
            "l2": trial.suggest_float("ffnn.l2", *_L2_RANGE, log=True),
            "learning_rate": trial.suggest_float("ffnn.learning_rate", *_LR_RANGE, log=True),
            "dropout": trial.suggest_float("ffnn.dropout", *_DROPOUT_RANGE),
            "batch_size": trial.suggest_categorical("ffnn.batch_size", _BATCH_SIZES),
        }

    @classmethod
    def defaults_for_trial(cls) -> dict:
        return {"ffnn.depth": 4, "ffnn.width": 256, "ffnn.l2": 0.02, "ffnn.learning_rate": 1e-3,
                "ffnn.dropout": 0.0, "ffnn.batch_size": 64}


def _import_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter; a user's setting wins
    return require("keras", "training the 'ffnn' head"), require("tensorflow", "training the 'ffnn' head")


@contextlib.contextmanager
def _float32_policy(keras):
    # Other code (the extractors) may leave a mixed_bfloat16 global policy behind; a head trains in float32.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def _keep_python_and_numpy_rng():
    # keras.utils.set_random_seed reseeds Python's and NumPy's global generators; fitting a head
    # should not change the random numbers its caller draws next.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
