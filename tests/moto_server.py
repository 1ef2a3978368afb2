"""moto's S3 server for the S3 tests, serving one request at a time.

`moto_server` serves each request on a thread of its own, and moto's S3 backend checks a
conditional create (`If-None-Match: *`) and stores the object in two separate steps: under load
two concurrent creates of one key can both succeed (CI saw 2 winners of 16). The tests check this
engine's use of conditional creates, not moto's locking, so this server is moto's own
application under werkzeug without threads: each request is whole before the next begins, as a
store whose conditional create is atomic behaves. A client that checked for the object and then
wrote it unconditionally would still let two writers through.

    python moto_server.py HOST PORT   (PORT 0: any free port; werkzeug logs the one it took)
"""

import os
import sys

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
run_simple(
    host,
    port,
    DomainDispatcherApplication(create_backend_app),
    threaded=False,
    request_handler=MotoRequestHandler,
)
