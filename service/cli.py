"""`occ serve`: run the gateway with uvicorn (no torch is imported)."""

import argparse
import asyncio
import logging
import logging.config
import os
import sys

HELP = "serve occupancy predictions over HTTP (FastAPI gateway, see API.md)"
OPENCV_PIXEL_LIMIT = "OPENCV_IO_MAX_IMAGE_PIXELS"

log = logging.getLogger("service.cli")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default: %(default)s)")
    parser.add_argument("--repository", help="model repository (default: the repo's model_repository/)")
    parser.add_argument("--model", help="default model, served when a request names none")
    parser.add_argument("--backend", choices=["embedded", "triton"],
                        help="where models run: in this process, or on a Triton server (default: embedded)")
    parser.add_argument("--triton-url", metavar="HOST:PORT",
                        help="with --backend triton: Triton's gRPC endpoint (default: 127.0.0.1:8001)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.backends.embedded import EmbeddedBackend
    from service.backends.triton import TritonBackend
    from service.core.config import Settings
    from service.core.logging import log_config

    # The workers build their apps from the environment (uvicorn's factory), so the flags go there.
    flags = {"OCC_MODEL_REPOSITORY": args.repository, "OCC_DEFAULT_MODEL": args.model,
             "OCC_BACKEND": args.backend, "OCC_TRITON_URL": args.triton_url}
    os.environ.update({name: str(value) for name, value in flags.items() if value is not None})
    settings = Settings()
    # Fail here, with one line, rather than in every worker's lifespan with a traceback: load every model
    # once (its contract and metadata checked) and let it go again.
    backend = (EmbeddedBackend if settings.backend == "embedded" else TritonBackend).load(
        settings.model_copy(update={"watch_interval_s": 0.0}))
    asyncio.run(backend.close())
    logging.config.dictConfig(log_config(settings.log_level))
    limit_opencv_pixels(settings.max_pixels)
    uvicorn.run("service.main:create_app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_config=log_config(settings.log_level))
    return 0


def limit_opencv_pixels(max_pixels: int) -> None:
    """OpenCV's own decode limit (OPENCV_IO_MAX_IMAGE_PIXELS, default 2^30) set to `max_pixels`: a second
    cap behind the header check. OpenCV reads it once, when cv2 is first imported, so this must run
    before; the workers inherit the environment."""
    os.environ[OPENCV_PIXEL_LIMIT] = str(max_pixels)
    if "cv2" in sys.modules:
        log.warning("cv2 was imported before %s was set: OpenCV keeps its own default", OPENCV_PIXEL_LIMIT)
    else:
        log.info("images over %d pixels are refused by their header and by OpenCV (%s)", max_pixels,
                 OPENCV_PIXEL_LIMIT)
