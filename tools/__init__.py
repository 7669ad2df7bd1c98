"""Operator tools that are not part of the library: the GPU check and its packing script."""
