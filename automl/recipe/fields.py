"""The recipe's field types: component names, comma-separated lists, paths that follow the recipe.

Shared by the model (which validates with them) and the explanation (which words what they accept),
so neither imports the other's internals.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from automl._files import store_root
from automl.augment.plan import AugmentSpec
from automl.errors import ConfigError
from automl.extractors import EXTRACTORS, PRECISIONS, UnknownExtractorError, resolve
from automl.registry import canonical


def extractor_names() -> list[str]:
    return EXTRACTORS.names()


def head_names() -> list[str]:
    from automl.heads import HEADS  # the head registry loads scikit-learn: only when a recipe is validated

    return HEADS.names()


def precision_names() -> list[str]:
    return list(PRECISIONS)


def unknown(kind: str, found: str, valid: list[str]) -> PydanticCustomError:
    close = difflib.get_close_matches(canonical(found), valid, n=1, cutoff=0.6)
    return PydanticCustomError(
        "unknown_name", "unknown {kind} {found!r}",
        {"kind": kind, "found": found, "valid": list(valid), "suggestion": close[0] if close else None})


@dataclass(frozen=True)
class Names:
    """A list item named from a registry: ``kind`` ("head"), the valid names, and, in words, any
    other forms it accepts. Messages read it from the field; ``check`` validates a plain name."""

    kind: str
    valid: Callable[[], list[str]]
    also: str = ""

    def choices(self) -> str:
        return ", ".join(self.valid()) + (f", {self.also}" if self.also else "")

    def check(self, name: str) -> str:
        valid = self.valid()
        key = canonical(name)
        if key not in valid:
            raise unknown(self.kind, name, valid)
        return key


def split_list(value: Any) -> Any:
    """``"a, b"`` and ``[a, b]`` mean the same (the CLI's ``--extractors a,b``)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, tuple):
        return list(value)
    return value


def no_duplicates(kind: str) -> AfterValidator:
    def check(names: list[str]) -> list[str]:
        seen = {n for n in names if names.count(n) > 1}
        if seen:
            raise PydanticCustomError("duplicate_name", "{kind} listed more than once: {names}",
                                      {"kind": kind, "names": ", ".join(sorted(seen))})
        return names

    return AfterValidator(check)


# A list of names: "a, b" or [a, b], each once (the list's own Annotated carries these).
CommaList = BeforeValidator(split_list)


def resolve_path(value: str, base_dir: Path | None) -> str:
    path = Path(value).expanduser()
    if base_dir is None or path.is_absolute():
        return str(path)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), path))


class _PretrainedFolder:
    """What a recipe reads of a store: the folder ``automl pretrain`` saves extractors in
    (``<store>/extractors``). The store itself sits above the recipe, which never imports it."""

    def __init__(self, root: str | None):
        self.extractors_dir = store_root(root) / "extractors"


def _extractor(value: Any, info: ValidationInfo) -> Any:
    """A name or ``{file: PATH, ...}`` -> the canonical name of what it resolves to: a built-in name,
    or ``file:`` with the absolute path (relative ones follow the recipe's folder) and the options;
    a pretrained extractor in the recipe's store ($AUTOML_STORE or ./store when it names none)
    resolves to its model file."""
    if not isinstance(value, (str, dict)):
        return value  # the type check words it
    context = info.context or {}
    store = _PretrainedFolder(context.get("extractor_store"))
    try:
        return resolve(value, store, base_dir=context.get("base_dir")).name
    except UnknownExtractorError as exc:
        raise unknown("extractor", value, exc.valid) from None
    except ConfigError as exc:
        raise PydanticCustomError("bad_extractor", "{problem}", {"problem": str(exc)}) from None


EXTRACTOR = Names("extractor", extractor_names,
                  also="file:PATH (a model file) or the name of an extractor made by `automl pretrain`")
HEAD = Names("head", head_names)
ExtractorName = Annotated[str, BeforeValidator(_extractor), EXTRACTOR]
HeadName = Annotated[str, AfterValidator(HEAD.check), HEAD]


def augment_shorthand(value: Any) -> Any:
    """``augment: dcgan`` means ``[{type: dcgan}]``: one variant or a list of them, names or mappings."""
    if isinstance(value, (str, dict, AugmentSpec)):
        value = [value]
    if isinstance(value, (list, tuple)):
        return [{"type": v} if isinstance(v, str) else v for v in value]
    return value
