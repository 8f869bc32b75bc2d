"""The one thing pyproject.toml cannot declare: the C extension of the contract checks
(``marketbus.contracts._checks``, see ``shared/marketbus/contracts/invariants.py``).

``make venv`` (``uv pip install -e .``) and the Dockerfile's build stage compile it; without a C
compiler the install fails here, loudly: the pure-Python checks are kept for the ``make dist``
wheel (``shared/pyproject.toml``, no extension: one wheel for any platform and Python 3.11+).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("marketbus.contracts._checks", ["shared/marketbus/contracts/_checks.c"])])
