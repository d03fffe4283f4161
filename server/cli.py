"""`speech7` command: `speech7 serve` runs the server (what scripts/serve ends with), `speech7 models ...`
manages models. The environment is read here, once."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import Settings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "models":
        from models.__main__ import main as models_main

        return models_main(args[1:])
    if args and args[0] not in {"serve"}:
        print("usage: speech7 [serve | models ...]", file=sys.stderr)
        return 2
    # Air-gapped by construction: no hub downloads, no telemetry, whatever the caller's environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYANNOTE_METRICS_ENABLED"] = "false"
    from server.settings import Settings

    settings = Settings.from_env()
    reexec_with_cuda_libs(settings, args)
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, ws="websockets")
    return 0


def reexec_with_cuda_libs(settings: Settings, args: list[str]) -> None:
    """On a GPU box whose CTranslate2 cannot find cuBLAS 12, start again once with the cuBLAS it can use on
    the loader path (engines.cuda_libs); the loader reads that path only at process start."""
    from engines.cuda_libs import environment_for_cuda

    env = environment_for_cuda(Path(settings.data_dir).resolve() / "cuda-libs", dict(os.environ))
    if env is not None:
        print(f"[speech7] CUDA: using cuBLAS from {env['LD_LIBRARY_PATH'].split(':')[0]}", flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "server.cli", *args], env)


if __name__ == "__main__":
    sys.exit(main())
