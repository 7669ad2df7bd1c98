"""TensorRT plans for the ngc repository: builder, accuracy gate, version lock, and the plan build step.

Importing this package does nothing by itself: build_tools.build lists `hook.plan_step` among its steps.
Nothing here imports `tensorrt` until a plan is actually built, so the package loads on machines without
TensorRT or a GPU.
"""
