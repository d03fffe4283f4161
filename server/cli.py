"""`speech7` command: `speech7 serve` runs the server (what scripts/serve ends with), `speech7 models ...`
manages models. The environment is read here, once."""

from __future__ import annotations

import logging
import os
import sys


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
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, ws="websockets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
