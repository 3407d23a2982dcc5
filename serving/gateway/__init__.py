"""The HTTP gateway: aiohttp app, codecs, handlers and the data plane they share."""
