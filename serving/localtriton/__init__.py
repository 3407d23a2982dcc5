"""Development tooling, not a serving layer: a real local ``tritonserver`` (from the
nvidia-pytriton wheel) serving a python-backend mirror of the model repository, for
``rankserve triton``, the tests and the Triton benchmark. Nothing that serves traffic
imports it."""
