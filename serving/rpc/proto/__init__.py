"""The rankserve protos. The ``*_pb2*`` modules beside them are generated, never committed:
by the build (``setup.py``'s ``build_py``) or, in a source checkout, on first import
(:mod:`serving.rpc.stubs`)."""
