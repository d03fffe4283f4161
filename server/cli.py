"""`speech7` command: `speech7 serve` runs the server (what scripts/serve ends with), `speech7 wyoming --uri
tcp://0.0.0.0:10300` runs the same server with the Wyoming protocol beside HTTP (S7_WYOMING_URI), `speech7
models ...` manages models. The environment is read here, once."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import Settings

USAGE = "usage: speech7 [serve | wyoming --uri URI | models ...]"
HELP = USAGE + """

  serve     run the HTTP server (WebSocket realtime included); every setting comes from S7_* environment
            variables (README.md, "Settings"), e.g. S7_HOST, S7_PORT, S7_DATA_DIR, S7_ADMIN_KEY, S7_DEVICE
  wyoming   the same server, also speaking the Wyoming protocol on --uri (see `speech7 wyoming --help`)
  models    install, import and list models (see `speech7 models --help`)"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "models":
        from models.__main__ import main as models_main

        return models_main(args[1:])
    if args[:1] in (["--help"], ["-h"]) or (args[:1] == ["serve"] and {"-h", "--help"} & set(args[1:])):
        print(HELP)  # `serve` takes no options: the environment configures it, so nothing else is parsed
        return 0
    if args and args[0] not in {"serve", "wyoming"}:
        print(USAGE, file=sys.stderr)
        return 2
    # Air-gapped by construction: no hub downloads, no telemetry, whatever the caller's environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    # numpy's BLAS (OpenBLAS in the wheels) would start a thread per core for every small matrix product
    # (the log-Mel filter bank) in every request thread at once: on a 16-core GPU box that oversubscription
    # burned a third of the CPU and cut /stt throughput by 30 % (C=64: 682x -> 1066x with one BLAS thread).
    # Parallelism comes from the request threads and the front end's processes instead. CTranslate2 and
    # torch keep their own thread pools. Set before numpy is imported; an operator's value wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from server.settings import Settings

    settings = Settings.from_env()
    reexec_with_cuda_libs(settings, args)
    import uvicorn

    from server.app import create_app
    from server.serving import uvicorn_options

    if args and args[0] == "wyoming":
        parser = argparse.ArgumentParser(
            prog="speech7 wyoming", description="Serve HTTP and the Wyoming protocol from one process "
            "(the same as S7_WYOMING_URI=URI speech7 serve); S7_WYOMING_API_KEY names the account billed.",
        )
        parser.add_argument("--uri", default=settings.wyoming_uri or "tcp://0.0.0.0:10300",
                            help="tcp://HOST:PORT or unix://PATH (default: tcp://0.0.0.0:10300)")
        settings = settings.with_(wyoming_uri=parser.parse_args(args[1:]).uri)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, **uvicorn_options(settings))  # redacted logs, header deadline (server.serving)
    return 0


def reexec_with_cuda_libs(settings: Settings, args: list[str]) -> None:
    """On a GPU box whose CTranslate2 cannot find cuBLAS 12, start again once with the cuBLAS it can use on
    the loader path (engines.cuda_libs); the loader reads that path only at process start."""
    from engines.cuda_libs import reexec_with_cuda_libs as reexec

    reexec(Path(settings.data_dir).resolve() / "cuda-libs", ["-m", "server.cli", *args])


if __name__ == "__main__":
    sys.exit(main())
