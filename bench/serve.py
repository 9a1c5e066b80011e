"""Serve the bench app (``http_app``) for `make bench`: ``python bench/serve.py PORT WORKERS``.

Through ``idmanager.api.serving.run``, as ``idmanager serve`` should; with ``--stock``, through
plain ``uvicorn.run`` instead, to show what its ``--workers`` costs (uvicorn issue #3149).
"""

from __future__ import annotations

import sys

import uvicorn

from idmanager.api.serving import run

if __name__ == "__main__":
    port, workers, stock = int(sys.argv[1]), int(sys.argv[2]), "--stock" in sys.argv
    options = {"host": "127.0.0.1", "port": port, "factory": True}
    options |= {"access_log": False, "log_level": "warning"}
    if stock:
        uvicorn.run("http_app:create_bench_app", workers=workers, **options)
    else:
        run("http_app:create_bench_app", workers=workers, **options)
