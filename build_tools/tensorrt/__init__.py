"""TensorRT plans for the ngc repository: builder, accuracy gate, version lock, `verify` subcommand.

Importing this package registers the plan step with `build_repositories` (a post-build hook) and
exposes `register_cli` for the `triton-repo` CLI. Nothing here imports `tensorrt` until a plan is
actually built, so the package loads on machines without TensorRT or a GPU.
"""

from __future__ import annotations

import argparse

from build_tools.repository import register_post_build_hook
from build_tools.tensorrt.hook import plan_build_hook
from build_tools.tensorrt.verify import register as _register_verify

register_post_build_hook(plan_build_hook)


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add this package's subcommands (verify) to the triton-repo CLI."""
    _register_verify(sub)


__all__ = ["plan_build_hook", "register_cli"]
