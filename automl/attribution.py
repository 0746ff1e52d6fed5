"""What the model looks at: a class-evidence map per image for a saved run (``automl explain``).

A map says where in an image the run's model found the evidence for one class (the predicted one,
or one named). Which kind ("auto") depends on what the run's extractor and head let us reach:

- **CAM** (Zhou et al., 2016): a Keras extractor whose embedding is the spatial mean of its last
  convolutional feature maps ``A`` (h x w x c) — every built-in backbone — with a linear head
  (``logreg-elasticnet``). The class's score is ``w_c . (x - mean) / scale + b_c`` with ``x`` the
  mean of ``A`` over the locations, so projecting the class's weights back through the head's
  standardisation gives each location's share exactly: ``CAM[i, j] = sum_k (w_ck / scale_k) A[i, j, k]``,
  and the mean of the map plus the intercept is the class's score.
- **integrated gradients** (Sundararajan et al., 2017) on the feature map: the other heads
  (``svc-rbf``, ``svc-nystroem``, ``ffnn``) on such an extractor. The head's decision is written in
  TensorFlow (``decision_function``: the RBF SVC's dual sum over its support vectors, the Nystroem map
  and its linear SVM, the feed-forward net), so its gradient is exact. The class's score changes from
  the head's mean training embedding ``mu`` (the average training image) to the image's embedding
  ``x`` along ``mu + t (x - mu)``; location (i, j) gets ``(A[i, j] - mu) . g / (h w)``, ``g`` the
  gradient averaged along that path (``IG_STEPS`` midpoints), so the map sums to
  ``score(x) - score(mu)``. For a linear head it is CAM less a constant.
- **Grad-CAM** (Selvaraju et al., 2017): ``ReLU(sum_k alpha_k A[:, :, k])`` with ``alpha_k`` the
  gradient of the class's score with respect to ``A``, averaged over the locations. "auto" takes it
  for Keras extractors with layers between their last feature map and the embedding (through which
  the gradient flows); ``method="grad-cam"`` asks for it anywhere a map is reachable. Measured on the
  planted case of ``tests/test_attribution.py`` (``bench/bench_explain.py``, docs/benchmarks.md):
  Grad-CAM of the RBF and feed-forward heads is often empty or off the evidence — their decision
  saturates, and beyond the support vectors falls again as the evidence grows, so the local gradient
  says little — where integrated gradients find the evidence in every image. That is why "auto"
  does not take Grad-CAM for them.
- **occlusion** (Zeiler & Fergus, 2014): models that give no gradient and no feature map (TFLite
  files, SavedModel folders — their serving signature exposes no inner map —, Keras models without a
  convolutional map), or any model with ``method="occlusion"``. A mid-grey square (a quarter of the
  input's side) slides over the image in steps of half its side; each pixel's value is the mean drop
  in the class's probability over the positions that cover it: 50 model calls an image. A saturated
  probability (1.0) drops nowhere, and the grey square is itself a shape the model may react to.

The class's score is its decision value: the signed distance of a two-class SVM (its negative for the
first class), the one-vs-rest decision of a multi-class SVC (votes plus confidences, as
scikit-learn's ``decision_function``), the logit of the feed-forward net or the logistic regression.
Maps are ReLU'd (only evidence *for* the class counts; a map with none is "empty") and divided by
their maximum, upsampled (bilinear) to the image and laid over it in viridis (readable with every
common colour-vision deficiency). The method's name is in every file name, table row, manifest entry
and report caption.

The feature map is as coarse as the extractor makes it: 8 x 8 for InceptionV3 at 299 px, 1 x 1 at
75 px (a map that cannot localise anything: the command says so; occlusion does not depend on it).
A convolution's zero padding can give the border locations evidence of their own, the same in every
image (measured with a small CNN: the maps then miss the planted square); occlusion does not see it.

Imports only NumPy at module level: TensorFlow comes with the extractor, matplotlib with a PNG.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from automl.errors import ConfigError, DataError, StoreError

FOLDER = "explain"  # inside a run folder: where `automl explain` writes by default, and what its report reads
MANIFEST = "explain.json"  # the folder's list of maps (what each shows), read by the run report
MANIFEST_VERSION = 1
# What a caller may ask for: "auto" picks CAM, integrated gradients, Grad-CAM or occlusion (module docstring).
METHODS = ("auto", "grad-cam", "integrated-gradients", "occlusion")
IG_STEPS = 32  # integrated gradients: midpoints of the path from the baseline to the image
COLORMAP = "viridis"
ALPHA = 0.65  # the map's share of an overlay pixel where it is 1 (where it is 0 the image shows as it is)
DISPLAY_SIDE = (224, 512)  # an overlay's longest side: the image's own, within these bounds
GREY = 128  # the occluding patch's value, in every channel
PATCH_FRACTION = 4  # occluding patch: 1/4 of the input side, moved by half of that
KINDS = ("image", "real", "synthetic")  # a user's image; a real / synthetic training image of the report's grid
_SLUG = {"CAM": "cam", "Grad-CAM": "gradcam", "integrated gradients": "ig", "occlusion": "occlusion"}


# --- the head's decision, in TensorFlow -----------------------------------------------------------


_DECISIONS = ("logreg-elasticnet", "svc-rbf", "svc-nystroem", "ffnn")  # heads decision_function writes in TensorFlow


def decision_function(head) -> Callable:
    """The head's decision as a TensorFlow function of raw embeddings ``(n, d)`` float64: what its
    inner scikit-learn model's ``decision_function`` gives on the standardised rows (``logreg-elasticnet``,
    ``svc-rbf``, ``svc-nystroem``: ``(n,)`` for two classes, ``(n, K)`` for more) or the network's logits
    (``ffnn``: ``(n, K)``). Differentiable wherever the head is; tests hold it to the head's own numbers."""
    import tensorflow as tf

    standardise = _standardiser(head)
    name = head.name
    if name == "logreg-elasticnet":
        W, b = _linear_rows(head)
        return lambda x: _squeezed(tf.matmul(standardise(x), W, transpose_b=True) + b)
    if name == "svc-rbf":
        return _svc_decision(_fitted_estimator(head), standardise)
    if name == "svc-nystroem":
        nystroem, svc = head.nystroem_, _fitted_estimator(head)
        landmarks = tf.constant(nystroem.components_, tf.float64)
        normalization = tf.constant(nystroem.normalization_, tf.float64)
        W, b = tf.constant(svc.coef_, tf.float64), tf.constant(svc.intercept_, tf.float64)
        gamma = float(nystroem.gamma)

        def nystroem_decision(x):
            z = tf.matmul(tf.exp(-gamma * _squared_distances(standardise(x), landmarks)), normalization,
                          transpose_b=True)
            return _squeezed(tf.matmul(z, W, transpose_b=True) + b)
        return nystroem_decision
    if name == "ffnn":
        layers = [(tf.constant(W, tf.float64), tf.constant(b, tf.float64))
                  for W, b in zip(head.coefs_, head.intercepts_)]

        def logits(x):
            h = standardise(x)
            for W, b in layers[:-1]:
                h = tf.nn.relu(tf.matmul(h, W) + b)
            return tf.matmul(h, layers[-1][0]) + layers[-1][1]
        return logits
    raise ConfigError(f"head {name!r} has no decision function in automl.attribution; explain its runs with "
                      "method='occlusion' (`automl explain --method occlusion`).")


def class_scores(head) -> Callable:
    """``(n, d)`` float64 embeddings -> ``(n, len(head.classes_))`` scores, one column per class the
    head knows: the decision function, a two-class decision ``f`` written as ``[-f, f]``."""
    import tensorflow as tf

    decide = decision_function(head)

    def scores(x):
        d = decide(x)
        return tf.stack([-d, d], axis=1) if len(d.shape) == 1 else d
    return scores


def linear_evidence(head) -> tuple[np.ndarray, np.ndarray] | None:
    """For a linear head, ``(W, b)`` on the raw embedding with ``scores = x @ W.T + b`` (one row per
    class of ``head.classes_``): its weights projected back through its standardisation. None otherwise."""
    if head.name != "logreg-elasticnet":
        return None
    W, b = (np.asarray(v, np.float64) for v in _linear_rows(head))
    if len(W) == 1:
        W, b = np.concatenate([-W, W]), np.concatenate([-b, b])
    scaler = head.scaler_
    scale = np.asarray(scaler.scale_, np.float64) if scaler.scale_ is not None else np.ones(W.shape[1])
    mean = np.asarray(scaler.mean_, np.float64) if scaler.mean_ is not None else np.zeros(W.shape[1])
    W_raw = W / scale
    return W_raw, b - W_raw @ mean


def _standardiser(head) -> Callable:
    import tensorflow as tf

    scaler = head.scaler_
    mean = tf.constant(scaler.mean_ if scaler.mean_ is not None else 0.0, tf.float64)
    scale = tf.constant(scaler.scale_ if scaler.scale_ is not None else 1.0, tf.float64)
    return lambda x: (x - mean) / scale


def _linear_rows(head) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression's (coef, intercept) on standardised features: one row per class, or one
    row for two classes (the second class's score), as its ``decision_function``."""
    model = head.model_
    if hasattr(model, "estimators_"):  # one-vs-rest: one binary model per class (one in all for two classes)
        return (np.stack([e.coef_[0] for e in model.estimators_]),
                np.array([e.intercept_[0] for e in model.estimators_]))
    return np.asarray(model.coef_), np.asarray(model.intercept_)


def _fitted_estimator(head):
    """The model a calibrated head predicts with (``ensemble=False``: one, fitted on all its rows)."""
    calibrated = getattr(head, "calibrated_", None)
    if calibrated is None:
        raise ConfigError(f"this {head.name} head was fitted for the search's folds only (fit_scores); a saved run's "
                          "head is fitted with fit, and has a decision function.")
    return calibrated.calibrated_classifiers_[0].estimator


def _svc_decision(svc, standardise) -> Callable:
    """An RBF SVC's ``decision_function`` (``decision_function_shape='ovr'``) in TensorFlow, from its
    support vectors and dual coefficients: libsvm's one-vs-one decisions, then scikit-learn's votes
    plus transformed confidences for more than two classes."""
    import tensorflow as tf

    sv = np.asarray(svc.support_vectors_, np.float64)
    dual = np.asarray(svc.dual_coef_, np.float64)
    counts = np.asarray(svc._n_support if hasattr(svc, "_n_support") else svc.n_support_, int)
    starts = np.concatenate([[0], np.cumsum(counts)])
    m = len(counts)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    # Pair k = (i, j): class i's support vectors weigh dual[j - 1], class j's weigh dual[i] (libsvm's layout).
    M = np.zeros((len(sv), len(pairs)))
    for k, (i, j) in enumerate(pairs):
        M[starts[i]:starts[i + 1], k] = dual[j - 1, starts[i]:starts[i + 1]]
        M[starts[j]:starts[j + 1], k] = dual[i, starts[j]:starts[j + 1]]
    vectors, coefs = tf.constant(sv), tf.constant(M)
    intercept = tf.constant(np.asarray(svc.intercept_, np.float64))
    gamma = float(svc._gamma)
    if m == 2:
        # scikit-learn flips a two-class SVC's public dual_coef_ and intercept_: positive means the second class.
        return lambda x: (tf.matmul(tf.exp(-gamma * _squared_distances(standardise(x), vectors)), coefs)[:, 0]
                          + intercept[0])
    wins_i, wins_j, signs = np.zeros((len(pairs), m)), np.zeros((len(pairs), m)), np.zeros((len(pairs), m))
    for k, (i, j) in enumerate(pairs):
        wins_i[k, i] = wins_j[k, j] = 1.0
        signs[k, i], signs[k, j] = 1.0, -1.0
    wins_i, wins_j, signs = tf.constant(wins_i), tf.constant(wins_j), tf.constant(signs)

    def ovr(x):
        dec = tf.matmul(tf.exp(-gamma * _squared_distances(standardise(x), vectors)), coefs) + intercept
        # scikit-learn's _ovr_decision_function(dec < 0, -dec, m): a vote per pair (no gradient) ...
        votes = tf.matmul(tf.cast(dec >= 0, tf.float64), wins_i) + tf.matmul(tf.cast(dec < 0, tf.float64), wins_j)
        # ... plus the summed confidences squashed into (-1/3, 1/3), so they only break ties of votes.
        confidence = tf.matmul(dec, signs)
        return votes + confidence / (3 * (tf.abs(confidence) + 1))
    return ovr


def _squared_distances(x, y):
    import tensorflow as tf

    d = (tf.reduce_sum(x * x, axis=1, keepdims=True) + tf.reduce_sum(y * y, axis=1)[None, :]
         - 2 * tf.matmul(x, y, transpose_b=True))
    return tf.maximum(d, 0.0)


def _squeezed(d):
    return d[:, 0] if d.shape[1] == 1 else d


# --- the extractor's last feature map -------------------------------------------------------------


class _FeatureMaps:
    """A Keras model cut at its last convolutional feature map ``A``. ``direct``: the embedding is
    the spatial mean of ``A`` (CAM is exact, and gradients need not pass through the model)."""

    def __init__(self, features, both, direct: bool, preprocess: Callable, size: int, batch_size: int = 16):
        self._features, self._both = features, both  # image -> A; image -> (A, model output)
        self.direct = direct
        self.preprocess, self.size, self.batch_size = preprocess, size, batch_size
        shape = (features if features is not None else both).outputs[0].shape
        self.grid = (int(shape[1]), int(shape[2]))

    def maps(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``A`` (n, h, w, c) and the embeddings (n, d), float32."""
        if self.direct:
            A = self._run(self._features, pixels)
            return A, A.mean(axis=(1, 2))
        out = self._run(self._both, pixels)
        return out[0], out[1]

    def gradients(self, pixels: np.ndarray, score: Callable,
                  A: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``A``, the embeddings, and the gradient of ``score(embeddings)`` (one value per image) with
        respect to ``A``; ``A`` given (from ``maps``) spares a forward pass where the map is direct."""
        import tensorflow as tf

        if self.direct:  # the embedding is mean(A): the gradient needs the head only, in float64
            A = self._run(self._features, pixels) if A is None else A
            a = tf.constant(A, tf.float64)
            with tf.GradientTape() as tape:
                tape.watch(a)
                s = tf.reduce_sum(score(tf.reduce_mean(a, axis=(1, 2))))  # images are independent: one sum
            return A, A.mean(axis=(1, 2)), np.asarray(tape.gradient(s, a), np.float32)
        parts = []
        for start in range(0, len(pixels), self.batch_size):
            x = tf.constant(self.preprocess(pixels[start:start + self.batch_size]))
            with tf.GradientTape() as tape:
                A, out = self._both(x, training=False)
                emb = tf.cast(_pooled(out), tf.float64)
                s = tf.reduce_sum(score(emb))
            grads = tape.gradient(s, A)
            parts.append([np.asarray(A, np.float32), np.asarray(emb, np.float32), np.asarray(grads, np.float32)])
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))

    def _run(self, model, pixels):
        from automl.embed import padded_size

        outs = []
        for start in range(0, len(pixels), self.batch_size):
            x = self.preprocess(pixels[start:start + self.batch_size])
            n, shape = len(x), padded_size(len(x), self.batch_size)  # few batch shapes: few graph traces
            x = np.concatenate([x, np.zeros((shape - n,) + x.shape[1:], x.dtype)]) if n < shape else x
            out = model.predict_on_batch(x)
            outs.append([np.asarray(o, np.float32)[:n] for o in (out if isinstance(out, (list, tuple)) else [out])])
        joined = [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]
        if model is self._both:
            joined[1] = _pooled(joined[1])
        return joined if len(joined) > 1 else joined[0]


def _pooled(out):
    """A model output as automl embeds it: a feature map is average-pooled."""
    if len(out.shape) == 4:
        import tensorflow as tf

        return tf.reduce_mean(out, axis=(1, 2)) if not isinstance(out, np.ndarray) else out.mean(axis=(1, 2))
    return out


def _cut(keras, model):
    """``(features, both, direct)`` for a Keras model: a model from its inputs to its last convolutional
    feature map; or, where layers other than an average pooling follow that map, one from its inputs
    to (the map, the model's output). (None, None, False) when no such map can be reached."""
    output = model.outputs[0]
    if len(output.shape) == 4:  # a feature map: automl average-pools it
        return model, None, True
    last = model.layers[-1]
    if isinstance(last, keras.layers.GlobalAveragePooling2D) and getattr(last, "data_format", "channels_last") \
            == "channels_last" and len(last.input.shape) == 4:
        return keras.Model(model.inputs, last.input), None, True
    if isinstance(last, keras.Model):  # a nested model (`automl pretrain`'s: rescaling -> backbone)
        inner, _, direct = _cut(keras, last)
        if inner is not None and direct:
            return keras.Model(model.inputs, inner(last.input)), None, True
        return None, None, False
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            break  # its insides are out of reach from here
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and None not in shape[1:3]:
            if isinstance(layer, (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.Normalization,
                                  keras.layers.Resizing)):
                break  # the input image itself, not a feature map
            return None, keras.Model(model.inputs, [layer.output, output]), False
    return None, None, False


def _keras_file_maps(path: Path, options) -> _FeatureMaps | None:
    from automl.extractors import import_keras

    keras = import_keras()
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # Keras raises many types for a file that is not its model
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is not a loadable Keras model: {first}") from exc
    size, channels = int(model.input_shape[1]), int(model.input_shape[3])

    def preprocess(pixels):
        x = pixels.astype(np.float32)
        if channels == 1:
            x = x.mean(axis=3, keepdims=True).round()
        return options.apply(x, 1.0)

    features, both, direct = _cut(keras, model)
    if features is None and both is None:
        return None
    return _FeatureMaps(features, both, direct, preprocess, size)


# --- maps -----------------------------------------------------------------------------------------


@dataclass
class Attribution:
    """One image's map: ``heat`` (h, w) in [0, 1] (ReLU'd, divided by its maximum; all zeros when
    nothing speaks for the class), ``raw`` the signed map before that, ``proba`` the probability of
    every class of the run, ``target`` the class index the map is for, ``method``."""

    heat: np.ndarray
    raw: np.ndarray
    proba: np.ndarray
    target: int
    method: str

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.proba))


class Explainer:
    """Maps for a saved run's model (``automl.runs.ModelBundle``): ``explain(pixels, targets)``.

    ``method``: "auto" (CAM, integrated gradients, Grad-CAM or occlusion, as the extractor and head
    allow; see the module's docstring), "grad-cam", "integrated-gradients" or "occlusion"; a method the
    run's model does not allow is refused, naming the ones it does. The extractor is rebuilt exactly
    as the run's (``ModelBundle`` refuses another); ``size`` is its input side: the pixels given are
    ``(n, size, size, 3)`` uint8.
    """

    def __init__(self, bundle, *, method: str = "auto", batch_size: int | None = None):
        from automl.embed import default_batch_size
        from automl.extractors import Backbone, ModelFile, resolve
        from automl.extractors.files import model_kind

        if method not in METHODS:
            raise ConfigError(f"--method {method!r}: expected one of {', '.join(METHODS)}.")
        self.bundle, self.head, self.classes = bundle, bundle.head, list(bundle.classes)
        key = bundle.extractor_key()  # refuses an extractor that is not the run's
        spec = resolve(bundle.source or key.extractor)
        self._maps: _FeatureMaps | None = None
        self._extractor = None
        gradients = self.head.name in _DECISIONS
        if method != "occlusion" and gradients:
            if isinstance(spec, Backbone):
                self._extractor = bundle.build_extractor()
                self._maps = _backbone_maps(self._extractor)
            elif isinstance(spec, ModelFile) and model_kind(spec.path) == "keras":
                self._maps = _keras_file_maps(spec.path, spec.options)
        if method in ("grad-cam", "integrated-gradients") and (self._maps is None or method ==
                                                                "integrated-gradients" and not self._maps.direct):
            reason = (f"head {self.head.name!r} has no decision function here" if not gradients else
                      f"extractor {spec.name} gives no convolutional feature map to attribute to" if self._maps is None
                      else f"extractor {spec.name} has layers between its last feature map and its embedding")
            allowed = "auto, grad-cam and occlusion" if self._maps is not None else "auto (occlusion) and occlusion"
            raise ConfigError(f"--method {method}: {reason}; this run allows {allowed}.")
        if self._maps is not None:
            self.size, self.grid = self._maps.size, self._maps.grid
            self._linear = linear_evidence(self.head) if self._maps.direct and method == "auto" else None
            if method == "auto":  # integrated gradients need the embedding to be the map's mean
                method = "cam" if self._linear is not None else "integrated-gradients" if self._maps.direct \
                    else "grad-cam"
            self.method = {"cam": "CAM", "grad-cam": "Grad-CAM", "integrated-gradients": "integrated gradients"}[method]
            self._scores = class_scores(self.head)
        else:
            self._extractor = self._extractor or bundle.build_extractor()
            self.size = self._extractor.image_size
            self.method = "occlusion"
            self.patch = max(1, round(self.size / PATCH_FRACTION))
            self.stride = max(1, self.patch // 2)
            starts = sorted(set(range(0, self.size - self.patch + 1, self.stride)) | {self.size - self.patch})
            self._positions = [(y, x) for y in starts for x in starts]
            self.grid = (self.size, self.size)
        self.batch_size = batch_size or default_batch_size(self.size)
        if self._maps is not None:
            self._maps.batch_size = self.batch_size

    @property
    def coarse(self) -> bool:
        """The map has one cell: it cannot say where anything is."""
        return self.grid == (1, 1)

    def column(self, target: int) -> int:
        """The head's column of class index ``target``; ``ConfigError`` when training never saw it."""
        known = [int(c) for c in self.head.classes_]
        if target not in known:
            raise ConfigError(f"class {self.classes[target]!r} had no training image in this run, so its model has no "
                              f"score for it; explain one of {', '.join(self.classes[c] for c in known)}.")
        return known.index(target)

    def explain(self, pixels: np.ndarray, targets: Sequence[int | None] | None = None) -> list[Attribution]:
        """A map per image of ``pixels`` (n, size, size, 3) uint8, for ``targets[i]`` (a class index;
        None: the class the model predicts)."""
        targets = list(targets) if targets is not None else [None] * len(pixels)
        if self.method == "occlusion":
            return [self._occlusion(image, target) for image, target in zip(pixels, targets)]
        import tensorflow as tf

        from automl.evaluate import full_proba

        A, emb = self._maps.maps(pixels)
        proba = full_proba(self.head, emb.astype(np.float64), len(self.classes))
        chosen = [int(np.argmax(p)) if t is None else int(t) for p, t in zip(proba, targets)]
        columns = np.array([self.column(t) for t in chosen])
        A64 = A.astype(np.float64)
        if self.method == "CAM":
            raw = np.einsum("nhwc,nc->nhw", A64, self._linear[0][columns])
        elif self.method == "Grad-CAM":
            index = tf.constant(np.stack([np.arange(len(columns)), columns], axis=1))
            A, _, grads = self._maps.gradients(pixels, lambda e: tf.gather_nd(self._scores(e), index), A)
            raw = np.einsum("nhwc,nc->nhw", A.astype(np.float64), grads.astype(np.float64).mean(axis=(1, 2)))
        else:
            raw = self._integrated(A64, emb.astype(np.float64), columns)
        return [Attribution(_normalised(r), r.astype(np.float32), p, t, self.method)
                for r, p, t in zip(raw, proba, chosen)]

    def _integrated(self, A: np.ndarray, emb: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Integrated gradients (Sundararajan et al., 2017) on the feature map, from the map of the
        head's mean training embedding ``mu`` (the same at every location) to the image's: the score
        depends on the map only through its mean, so location (i, j) gets ``(A[i, j] - mu) . g / (h w)``
        with ``g`` the score's gradient averaged along the path ``mu + t (x - mu)``; the map sums to
        ``score(x) - score(mu)`` (up to the ``IG_STEPS``-point midpoint rule)."""
        import tensorflow as tf

        mu = np.asarray(self.head.scaler_.mean_, np.float64)
        t = (np.arange(IG_STEPS) + 0.5) / IG_STEPS
        path = tf.constant((mu + t[:, None, None] * (emb - mu)[None]).reshape(-1, emb.shape[1]))
        index = tf.constant(np.stack([np.arange(len(path)), np.tile(columns, IG_STEPS)], axis=1))
        with tf.GradientTape() as tape:
            tape.watch(path)
            total = tf.reduce_sum(tf.gather_nd(self._scores(path), index))
        g = np.asarray(tape.gradient(total, path)).reshape(IG_STEPS, len(emb), -1).mean(axis=0)
        h, w = A.shape[1:3]
        return np.einsum("nhwc,nc->nhw", A - mu, g) / (h * w)

    def _occlusion(self, image: np.ndarray, target: int | None) -> Attribution:
        from automl.embed import embed_batch
        from automl.evaluate import full_proba

        batch = [image]
        for y, x in self._positions:
            occluded = image.copy()
            occluded[y:y + self.patch, x:x + self.patch] = GREY
            batch.append(occluded)
        batch = np.stack(batch)
        emb = np.concatenate([embed_batch(self._extractor, batch[i:i + self.batch_size], self.batch_size)
                              for i in range(0, len(batch), self.batch_size)])
        proba = full_proba(self.head, emb.astype(np.float64), len(self.classes))
        chosen = int(np.argmax(proba[0])) if target is None else int(target)
        self.column(chosen)
        drops = proba[0, chosen] - proba[1:, chosen]
        total, count = np.zeros((self.size, self.size)), np.zeros((self.size, self.size))
        for (y, x), drop in zip(self._positions, drops):
            total[y:y + self.patch, x:x + self.patch] += drop
            count[y:y + self.patch, x:x + self.patch] += 1
        raw = total / np.maximum(count, 1)
        return Attribution(_normalised(raw), raw.astype(np.float32), proba[0], chosen, "occlusion")


def _backbone_maps(extractor) -> _FeatureMaps | None:
    from automl.extractors import import_keras

    features, both, direct = _cut(import_keras(), extractor.model)
    if features is None and both is None:
        return None
    return _FeatureMaps(features, both, direct, extractor.preprocess, extractor.image_size)


def _normalised(raw: np.ndarray) -> np.ndarray:
    heat = np.maximum(np.asarray(raw, np.float64), 0.0)
    top = heat.max() if heat.size else 0.0
    return (heat / top if top > 0 else heat).astype(np.float32)


# --- pictures -------------------------------------------------------------------------------------


def display_pixels(item) -> np.ndarray:
    """An image as an overlay shows it: its own aspect ratio, its longest side within ``DISPLAY_SIDE``."""
    from PIL import Image

    lo, hi = DISPLAY_SIDE
    if item.width * item.height <= 4 * hi * hi:
        pixels = item.load(None)  # small enough to decode whole: the true orientation (EXIF) and aspect
        h, w = pixels.shape[:2]
    else:  # a large scan: decoded square at the display side, then given its aspect back
        w, h = item.width, item.height
        pixels = item.load(hi)
    side = int(np.clip(max(w, h), lo, hi))
    size = (side, max(1, round(side * h / w))) if w >= h else (max(1, round(side * w / h)), side)
    if pixels.shape[1::-1] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``heat`` (h, w) in [0, 1], upsampled (bilinear) to ``pixels`` (H, W, 3) uint8 and laid over it in
    ``COLORMAP``, each pixel's colour weighing ``alpha`` times its value: no evidence leaves the image
    as it is, the most evidence shows bright yellow."""
    from matplotlib import colormaps
    from PIL import Image

    H, W = pixels.shape[:2]
    up = np.asarray(Image.fromarray(np.asarray(heat, np.float32), "F").resize((W, H), Image.Resampling.BILINEAR))
    up = np.clip(up, 0.0, 1.0)
    colours = colormaps[COLORMAP](up)[..., :3] * 255.0
    weight = alpha * up[..., None]
    return np.clip((1 - weight) * pixels + weight * colours, 0, 255).round().astype(np.uint8)


def png_bytes(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# --- explaining a run's images ----------------------------------------------------------------------


@dataclass
class Explained:
    """One map written: which image, what the model said, which class the map is for, how, and where."""

    image: str
    kind: str  # KINDS
    row: str | None  # the class a real/synthetic image of the report's grid stands for
    predicted: str
    probability: float  # of the predicted class
    explained: str  # the class the map is for
    explained_probability: float
    method: str
    grid: tuple[int, int]
    png: str  # file name in the output folder
    npy: str
    empty: bool  # nothing in the image speaks for the class by this method (the map is all zeros)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class ExplainResult:
    folder: Path
    rows: list[Explained]
    skipped: list = field(default_factory=list)  # automl.data.BadFile
    notes: list[str] = field(default_factory=list)


def explain_run(run_folder: str | Path, images: Sequence[str | Path] = (), *, out: str | Path | None = None,
                target: str | None = None, synthetic: int = 0, method: str = "auto", skip_bad: bool = False,
                progress: bool = False) -> ExplainResult:
    """Write a map per image (files, or folders searched recursively) into ``out`` (default: the run's
    ``explain/``), as ``<name>.<method>.<class>.png`` (the overlay) and ``.npy`` (the map, float32 in
    [0, 1], at the map's own resolution), and list them in ``explain.json`` there.

    ``target``: the class every map is for (default: each image's predicted class). ``synthetic``:
    also explain that many real and synthetic training images per augmented class of the run (its
    augmentation's generated images in the store), each for its own class — the report's grid;
    a later call replaces the grid. Images are decoded with the checks of every automl input."""
    from automl import progress as events
    from automl.data import BadFile, load_images
    from automl.runs import ModelBundle, RunRecord

    folder = Path(run_folder)
    record = RunRecord.read(folder)
    if not images and not synthetic:
        raise DataError("no images to explain: name image files or folders, or pass --synthetic N for real and "
                        "synthetic training images of an augmented run.")
    if synthetic < 0:
        raise ConfigError(f"--synthetic must be 0 or more images per class; got {synthetic}.")
    target_index = None
    if target is not None:
        if target not in record.classes:
            raise ConfigError(f"--class {target!r} is not a class of run {record.id}; its classes: "
                              f"{', '.join(record.classes)}.")
        target_index = record.classes.index(target)
    todo: list[tuple[object, str, str | None, int | None, str]] = []  # (item, kind, row, target, file stem)
    bad: list = []
    if images:
        items, bad = load_images(list(images), skip_bad=skip_bad)
        if not items:
            raise DataError(f"none of the {len(bad)} file(s) given is a decodable image; nothing to explain.")
        stems: dict[str, int] = {}
        for it in items:
            stem = _safe(Path(it.path).stem, 60) or "image"
            stems[stem] = stems.get(stem, 0) + 1
            todo.append((it, "image", None, target_index, stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"))
    if synthetic:
        todo += _grid_items(record, folder, synthetic)

    bundle = ModelBundle.load(folder)
    explainer = Explainer(bundle, method=method)
    out_dir = Path(out) if out is not None else folder / FOLDER
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write the maps into {out_dir}: {exc.strerror or exc}. Pass --out with a folder "
                         "you can write to.") from exc
    notes = []
    if explainer.coarse:
        notes.append(f"the extractor's last feature map is 1 x 1 at {explainer.size} px, so the {explainer.method} map "
                     "is one cell and shows nothing of where the evidence lies; fit with a larger image size, or "
                     "pass --method occlusion.")
    rows: list[Explained] = []
    bar = events.bar(total=len(todo), desc=f"explain ({explainer.method})", unit="img", disable=not progress,
                     leave=False, dynamic_ncols=True)
    try:
        step = 1 if explainer.method == "occlusion" else explainer.batch_size
        for start in range(0, len(todo), step):
            chunk, pixels = [], []
            for entry in todo[start:start + step]:
                try:
                    pixels.append(entry[0].load(explainer.size))
                    chunk.append(entry)
                except DataError as exc:
                    if not skip_bad:
                        raise
                    bad.append(BadFile(entry[0].path, str(exc)))
            if chunk:
                for entry, attribution in zip(chunk, explainer.explain(np.stack(pixels), [e[3] for e in chunk])):
                    rows.append(_write_map(out_dir, entry, attribution, record.classes))
            bar.update(len(todo[start:start + step]))
    finally:
        bar.close()
    _write_manifest(out_dir, record.id, rows, replace_grid=bool(synthetic))
    empty = sum(r.empty for r in rows)
    if empty:
        notes.append(f"{empty} of {len(rows)} maps are empty: {_EMPTY[explainer.method]}")
    return ExplainResult(out_dir, rows, bad, notes)


_EMPTY = {
    "CAM": "no location's features raise the class's score (its evidence is the absence of something).",
    "Grad-CAM": "the gradient finds no location whose features raise the class's score (a saturated decision, or "
                "an RBF SVM's beyond its support vectors, can have none at a confidently classified image); "
                "--method integrated-gradients attributes the score along the path from the average training image.",
    "integrated gradients": "the class's score is no higher than at the average training image.",
    "occlusion": "no occluded square lowers the class's probability (it may be saturated at 1, or the evidence "
                 "larger than the square).",
}


def _write_map(out_dir: Path, entry, attribution: Attribution, classes: list[str]) -> Explained:
    from automl._files import atomic_write

    item, kind, row, _, stem = entry
    explained = classes[attribution.target]
    name = f"{stem}.{_SLUG[attribution.method]}.{_safe(explained, 40) or attribution.target}"
    picture = overlay(display_pixels(item), attribution.heat)
    # A file name's bytes that are not UTF-8 (surrogate escapes) as \xNN: PNG text must be encodable.
    shown = str(item.path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = {"automl-method": attribution.method, "automl-class": explained, "automl-image": shown}
    atomic_write(out_dir / f"{name}.png", lambda f: f.write(png_bytes(picture, text)))
    atomic_write(out_dir / f"{name}.npy", lambda f: np.save(f, attribution.heat, allow_pickle=False))
    predicted = attribution.predicted
    return Explained(str(item.path), kind, row, classes[predicted], float(attribution.proba[predicted]), explained,
                     float(attribution.proba[attribution.target]), attribution.method,
                     tuple(int(v) for v in attribution.heat.shape), f"{name}.png", f"{name}.npy",
                     not bool(attribution.heat.max(initial=0.0) > 0))


def _write_manifest(out_dir: Path, run_id: str, rows: list[Explained], replace_grid: bool) -> None:
    """``explain.json``: earlier entries are kept unless this call rewrote their file, or (``replace_grid``)
    they belong to the grid of real and synthetic images, which is replaced with its files."""
    from automl._files import write_json

    written = {r.png for r in rows}
    kept = []
    for entry in read_manifest(out_dir)[0]:
        if entry["png"] in written:
            continue
        if replace_grid and entry["kind"] != "image":
            for name in (entry["png"], entry.get("npy")):
                if name and _plain_name(name):
                    (out_dir / name).unlink(missing_ok=True)
            continue
        kept.append(entry)
    write_json(out_dir / MANIFEST, {"version": MANIFEST_VERSION, "run": run_id, "colormap": COLORMAP,
                                    "maps": kept + [r.to_dict() for r in rows]})


def read_manifest(folder: Path) -> tuple[list[dict], str | None]:
    """The entries of ``folder/explain.json`` whose PNG is there, and a note on what was left out (an
    unreadable manifest, entries naming files outside the folder or missing); ([], None) without one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return [], None
    try:
        data = json.loads(path.read_text())
        entries = data["maps"]
        if not isinstance(entries, list):
            raise ValueError("'maps' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], f"cannot read {path} ({exc}); run `automl explain` again to rewrite it."
    good, dropped = [], 0
    for entry in entries:
        ok = (isinstance(entry, dict) and isinstance(entry.get("png"), str) and _plain_name(entry["png"])
              and entry.get("kind") in KINDS and entry.get("method") in _SLUG
              and all(isinstance(entry.get(k), str) for k in ("image", "predicted", "explained"))
              and isinstance(entry.get("probability"), (int, float)) and not isinstance(entry["probability"], bool)
              and (Path(folder) / entry["png"]).is_file())
        if ok:
            good.append(entry)
        else:
            dropped += 1
    note = None
    if dropped:
        note = f"{dropped} entr{'y' if dropped == 1 else 'ies'} of {path} name no map file there; left out."
    return good, note


def _plain_name(name: str) -> bool:
    """A file name in the folder itself: no separator, no parent, not hidden."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and Path(name).name == name


def _safe(text: str, limit: int) -> str:
    """Text as part of a file name: letters, digits, ``-``, ``_``, ``.`` kept, anything else ``_``."""
    return re.sub(r"[^\w.-]", "_", text, flags=re.ASCII).strip("._")[:limit]


# --- real and synthetic training images, for the report's grid -----------------------------------------


def _grid_items(record, folder: Path, per_class: int) -> list[tuple]:
    """Per augmented class: up to ``per_class`` synthetic images of the run's augmentation (the first
    ones that trained) and as many real training images — the synthetic ones' sources first, where the
    augmenter used one, then training images spread over the class."""
    from automl.augment.generate import generated_folder, trained_indices
    from automl.data import load_images

    aug = record.augment
    if not aug:
        raise ConfigError(f"--synthetic: run {record.id} is not augmented (it was fitted on real images only); "
                          "give an augmented run (`automl runs` shows them), or leave --synthetic out.")
    root = generated_folder(aug, record.id, folder, prefix="--synthetic: ")
    training = _training_images(record, folder)
    out = []
    for name, count in (aug.get("synthetic_per_class") or {}).items():
        if name not in record.classes or not int(count):
            continue
        label = record.classes.index(name)
        synthetic, sources = [], []
        for k in trained_indices(aug, name)[:per_class]:  # a filter's choice, where it made one
            try:
                rec = json.loads((root / str(label) / f"{k:06d}.json").read_text())
            except (OSError, ValueError):
                break
            if isinstance(rec.get("file"), str) and _plain_name(rec["file"]):
                synthetic.append(root / str(label) / rec["file"])
                sources += [s.get("path") for s in rec.get("sources") or [] if isinstance(s, dict)]
        members = training.get(label, [])
        by_path = {it.path: it for it in members}
        real = [by_path[p] for p in dict.fromkeys(sources) if p in by_path][:per_class]
        rest = [it for it in members if it not in real]
        if rest and len(real) < per_class:
            picks = np.linspace(0, len(rest) - 1, min(per_class - len(real), len(rest))).round().astype(int)
            real += [rest[i] for i in dict.fromkeys(picks.tolist())]
        for k, it in enumerate(real):
            out.append((it, "real", name, label, f"real-{label}-{k:02d}"))
        if synthetic:
            items, _ = load_images([str(p) for p in synthetic], skip_bad=True)
            for k, it in enumerate(items):
                out.append((it, "synthetic", name, label, f"synthetic-{label}-{k:02d}"))
    if not out:
        raise DataError(f"--synthetic: run {record.id}'s augmentation folder {root} holds no synthetic image records.")
    return out


def _training_images(record, folder: Path) -> dict[int, list]:
    """The run's real training images (train and val of ``split.json``) by class index, as items whose
    content is still what the run saw."""
    from automl.data import load_dataset, load_images

    try:
        split = json.loads((folder / "split.json").read_text())
        saved = [(e["path"], e["label"], e["fingerprint"]) for e in split["items"] if e["split"] != "test"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"cannot read {folder / 'split.json'} ({exc}): the run's training images are unknown. "
                         f"Fit the run again (`automl run {folder / 'recipe.yaml'}`).") from exc
    if record.layout == "npz":
        loaded = {it.path: it for it in load_dataset(record.data, skip_bad=True).items}
    else:
        items, _ = load_images([p for p, _, _ in saved if Path(p).is_file()], skip_bad=True)
        loaded = {it.path: it for it in items}
    out: dict[int, list] = {}
    for path, label, fingerprint in saved:
        it = loaded.get(path)
        if it is not None and it.fingerprint == fingerprint:
            out.setdefault(int(label), []).append(it)
    return out
