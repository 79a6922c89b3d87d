"""The warm stage (issue 15): before a pool's nodes pull, the site's pull-through cache is
made to hold every blob of their sets, each fetched from upstream once, within a rate budget
and maintenance windows. Used by pinctl (file mode) and the controller alike.

Pure: `window.py` (the windows), `plan.py` (order, pacer, window arithmetic, progress),
`manifests.py` (the blobs an image names). I/O: `routes.py` (which cache, from the nodes'
registries.conf), `registry.py` (the cache's HTTP API), `stage.py` (the Warmer).
See docs/warm.md.
"""
