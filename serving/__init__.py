"""rankserve: a low-latency multi-task ranking inference server."""
