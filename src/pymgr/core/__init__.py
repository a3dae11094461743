"""The core: modules, actions, dispatch. Knows nothing about sockets, HTTP or storage."""
