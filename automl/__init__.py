"""automl: AutoML for image classification on small, hard datasets.

Importing the package loads neither TensorFlow, torch nor diffusers; the modules that need them
import them when used.
"""

import os

# OpenMP threads that spin while waiting (the default) starve each other and everything else on a
# busy CPU: torch's DCGAN training ran 9-10x slower with other work on the same 2 cores
# (docs/benchmarks.md). Passive waiting costs little on an idle machine. It must be set before
# torch's OpenMP runtime starts, i.e. before torch is imported, which automl only does later; a
# value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# The Python API (automl.api), loaded on first use so that ``import automl`` stays light.
_API = ("fit", "compare", "load_run", "Run")
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        from automl import api

        return getattr(api, name)
    raise AttributeError(f"module 'automl' has no attribute {name!r}")
