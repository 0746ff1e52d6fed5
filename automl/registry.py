"""Components looked up by their canonical kebab-case name. Imports nothing of the project."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from automl.errors import ConfigError

T = TypeVar("T")


def canonical(name: str) -> str:
    """``Inception_V3`` and ``inception-v3`` name the same component."""
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """A name -> component table filled by a decorator; unknown names list the valid ones.

    ``package`` names the package whose modules hold the components: every one of its modules is
    imported (``discover``) at the first lookup, not before, so importing a registry stays cheap
    and adding a component is adding its file.
    """

    def __init__(self, kind: str, package: str | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._package = package

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator (or a call on a value): ``@HEADS.register("svc-rbf")`` in the component's own file."""
        key = canonical(name)
        if key != name.strip():
            raise ValueError(f"{self.kind} name {name!r} is not canonical kebab-case ({key!r})")

        def add(item: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = item
            return item

        return add

    def register_class(self, cls: T) -> T:
        """A class decorator for a component class that carries its key as ``name`` (heads,
        augmenters): ``@register`` above the class, the name written once, in the class."""
        return self.register(cls.name)(cls)

    def get(self, name: str) -> T:
        key = canonical(name)
        try:
            return self._all()[key]
        except KeyError:
            valid = ", ".join(self.names())
            raise ConfigError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._all())

    def __contains__(self, name: str) -> bool:
        return canonical(name) in self._all()

    def _all(self) -> dict[str, T]:
        if self._package is not None:
            package, self._package = self._package, None  # a module looking a name up meanwhile: no loop
            try:
                discover(package)
            except BaseException:
                self._package = package  # the next lookup meets the same error, not a partial table
                raise
        return self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def discover(package: str) -> None:
    """Import every module of ``package`` (not those starting with ``_``), so each registers its
    components through its own decorator: adding a component is adding its file, no list to keep."""
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
