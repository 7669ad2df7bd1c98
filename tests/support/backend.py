"""Import Python-backend model files as Triton imports them, outside the server.

The models import ``triton_python_backend_utils``; the real module ships beside the Python backend in
the nvidia-pytriton wheel and its pure-Python helpers (type names, exceptions) work without the stub.
Modules are imported by their package path, so a mutation tool that rewrites them sees the tests call
them.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from build_tools.server import find_distribution


def import_backend_model(module: str) -> ModuleType:
    backend = str(find_distribution().python_backend)
    if backend not in sys.path:
        sys.path.append(backend)
    return importlib.import_module(module)
