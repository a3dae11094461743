"""pymgr's HTTP/1.1 edge: its own connection on httptools, the server, the API's routes.

Modules, each importing only those above it in this list (a test walks the imports to keep it so):

- ``messages``: the request and reply values a handler sees and returns, and their encoding.
- ``limits``: the sizes and timeouts a connection enforces, and the peer's identity.
- ``state``: what every connection of one server shares (handler, limits, counter, open connections).
- ``reader``: bytes in, requests out: httptools parses, every byte counts against the limits, each head is checked.
- ``deadline``: a connection's one timer for a deadline that moves at every request.
- ``stream_sender``: a stream reply on the wire (chunked, or unframed to HTTP/1.0), produced as the client reads.
- ``connection``: one HTTP/1.1 connection (reads through its reader; queues, replies, times out, refuses).
- ``server``: the listening sockets, their connections and a two-step shutdown.
- ``guard``: the signature and rate checks in front of the app; ``tls``: the TCP listener's TLS context.
- ``streams``, ``metrics``, ``openapi``: what some routes answer with.
- ``routes``: the API's routes, each mapped to a call of the pipeline.
"""
