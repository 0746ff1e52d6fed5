"""A fitted head as plain data: a JSON tree plus NumPy arrays, rebuilt without running stored code.

``to_state(head)`` walks the head's attributes (``__getstate__``, as pickle would) and returns
``(tree, arrays)``: ``tree`` is JSON-able, ``arrays`` maps the names the tree refers to onto
numeric/string arrays that ``numpy.savez`` writes and ``numpy.load(allow_pickle=False)`` reads.
``from_state(head_cls, tree, arrays)`` rebuilds it. The two sides exchange only:

- ``None``, bools, ints, strings, lists, and finite floats, as JSON;
- ``{"float": "nan" | "inf" | "-inf"}`` (strict JSON has no such numbers), ``{"tuple": [...]}``,
  ``{"dict": {str: ...}}``;
- ``{"array": name}`` and ``{"scalar": name}``: a NumPy array or scalar, by its entry in the arrays
  (a scalar is a 0-d array), bit for bit;
- ``{"object": type name, "state": {"dict": ...}}``: an instance of one of the types the head lists
  in ``state_types`` (plus the head class itself), made with ``cls.__new__`` and given its state as
  pickle would, without calling ``__init__``.

A type name is a key into that list, made from the class objects this process already imported:
nothing in a bundle names a module to import or a function to call. Anything else — an unknown tag,
an unlisted type, a dunder attribute, an object array — is refused with ``ValueError`` naming where
in the tree it sits.
"""

from __future__ import annotations

import math
import re

import numpy as np

_ATTRIBUTE = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*\Z")  # a plain attribute name, never a dunder
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def allowed_types(head_cls) -> dict[str, type]:
    """The types a bundle of ``head_cls`` may hold, by the names the tree gives them."""
    return {type_name(t): t for t in (head_cls, *head_cls.state_types)}


def to_state(head) -> tuple[object, dict[str, np.ndarray]]:
    """The head's JSON tree and the arrays it refers to; ``ValueError`` for a value it cannot hold."""
    arrays: dict[str, np.ndarray] = {}
    allowed = allowed_types(type(head))
    return _encode(head, "head", allowed, arrays), arrays


def from_state(head_cls, tree, arrays) -> object:
    """``head_cls`` rebuilt from ``to_state``'s output; ``arrays`` is a mapping (an ``NpzFile`` will do)."""
    head = _decode(tree, "head", allowed_types(head_cls), arrays)
    if type(head) is not head_cls:
        raise ValueError(f"head: expected a {type_name(head_cls)} object, found {_kind(head)}")
    return head


def _encode(value, where: str, allowed: dict[str, type], arrays: dict) -> object:
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if type(value) is list:
        return [_encode(v, f"{where}[{i}]", allowed, arrays) for i, v in enumerate(value)]
    if type(value) is tuple:
        return {"tuple": [_encode(v, f"{where}[{i}]", allowed, arrays) for i, v in enumerate(value)]}
    if type(value) is dict:
        return {"dict": _encode_dict(value, where, allowed, arrays)}
    if type(value) is np.ndarray or isinstance(value, np.generic):
        if value.dtype.hasobject or value.dtype.kind == "V":
            raise ValueError(f"{where}: a NumPy array of dtype {value.dtype} cannot be saved without pickle")
        name = f"a{len(arrays)}"
        arrays[name] = np.asarray(value)
        return {"array" if isinstance(value, np.ndarray) else "scalar": name}
    if allowed.get(type_name(type(value))) is type(value):
        state = value.__getstate__()  # pickle's view of the object
        state = {} if state is None else state
        if type(state) is not dict or not all(isinstance(k, str) and _ATTRIBUTE.match(k) for k in state):
            raise ValueError(f"{where}: {type_name(type(value))} keeps its state in a form a bundle cannot hold "
                             "(a dict of plain attribute names)")
        return {"object": type_name(type(value)), "state": {"dict": _encode_dict(state, where, allowed, arrays)}}
    raise ValueError(f"{where}: a {_kind(value)} is not a type a model bundle may hold; a head lists the "
                     f"types its fitted state holds in its state_types (now: {', '.join(allowed) or 'none'})")


def _encode_dict(value: dict, where: str, allowed, arrays) -> dict:
    for key in value:
        if not isinstance(key, str):
            raise ValueError(f"{where}: dictionary key {key!r} is not a string")
    return {k: _encode(v, f"{where}.{k}", allowed, arrays) for k, v in value.items()}


def _decode(node, where: str, allowed: dict[str, type], arrays) -> object:
    if node is None or type(node) in (bool, int, str):
        return node
    if type(node) is float:
        if not math.isfinite(node):
            raise ValueError(f"{where}: a non-finite number outside the {{'float': ...}} form")
        return node
    if type(node) is list:
        return [_decode(v, f"{where}[{i}]", allowed, arrays) for i, v in enumerate(node)]
    if type(node) is dict and set(node) == {"object", "state"} and type(node["object"]) is str:
        return _object(node["object"], node["state"], where, allowed, arrays)
    if type(node) is not dict or len(node) != 1:
        raise ValueError(f"{where}: expected a JSON value or one of the tagged forms ('tuple', 'dict', 'array', "
                         f"'scalar', 'float', 'object'); found {_clip(node)}")
    tag, body = next(iter(node.items()))
    if tag == "float" and body in _NON_FINITE:
        return _NON_FINITE[body]
    if tag == "tuple" and type(body) is list:
        return tuple(_decode(v, f"{where}[{i}]", allowed, arrays) for i, v in enumerate(body))
    if tag == "dict" and type(body) is dict:
        return {k: _decode(v, f"{where}.{k}", allowed, arrays) for k, v in body.items()}
    if tag in ("array", "scalar") and type(body) is str:
        return _array(tag, body, where, arrays)
    raise ValueError(f"{where}: unknown form {_clip(node)}")


def _array(tag: str, name: str, where: str, arrays):
    if name not in arrays:
        raise ValueError(f"{where}: array {name!r} is not in the bundle's arrays")
    value = arrays[name]
    if not isinstance(value, np.ndarray) or value.dtype.hasobject:
        raise ValueError(f"{where}: array {name!r} is not a plain NumPy array")
    if tag == "scalar":
        if value.ndim:
            raise ValueError(f"{where}: scalar {name!r} has shape {value.shape}, expected ()")
        return value[()]
    return value


def _object(name: str, state, where: str, allowed: dict[str, type], arrays):
    cls = allowed.get(name)
    if cls is None:
        raise ValueError(f"{where}: type {name!r} is not one this head's bundle may hold "
                         f"({', '.join(allowed)}); nothing else is ever built from a bundle")
    if type(state) is not dict or set(state) != {"dict"} or type(state["dict"]) is not dict:
        raise ValueError(f"{where}: the state of {name} must be {{'dict': {{attribute: value}}}}")
    attributes = state["dict"]
    for key in attributes:
        if not _ATTRIBUTE.match(key):
            raise ValueError(f"{where}: {key!r} is not a plain attribute name")
    obj = cls.__new__(cls)
    values = {k: _decode(v, f"{where}.{k}", allowed, arrays) for k, v in attributes.items()}
    setstate = getattr(obj, "__setstate__", None)
    if setstate is not None:  # scikit-learn's: a version check, then the attributes
        setstate(values)
    else:
        obj.__dict__.update(values)
    return obj


def _kind(value) -> str:
    return type_name(type(value))


def _clip(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
