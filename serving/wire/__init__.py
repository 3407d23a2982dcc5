"""Wire formats shared by the server and its clients; they import only numpy and orjson
(and the project's errors), so ``serving.client`` needs none of the server's dependencies."""
