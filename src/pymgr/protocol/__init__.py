"""Pure codecs, no I/O: nothing here imports asyncio, socket or os."""
