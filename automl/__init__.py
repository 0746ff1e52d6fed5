"""automl: AutoML for image classification on small, hard datasets.

Importing the package loads neither TensorFlow, torch nor diffusers; the modules that need them
import them when used.
"""

__version__ = "0.1.0"
