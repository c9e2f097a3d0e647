"""Log lines of `occ serve`: one line per event, `<time> <LEVEL> <logger>: <message>`, for the gateway's
own loggers (`service.*`: version swaps, rollbacks, Triton retries, refused backends) and uvicorn's."""

from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(client_addr)s "%(request_line)s" %(status_code)s'


def log_config(level: str) -> dict[str, Any]:
    """A logging.config.dictConfig for uvicorn's `log_config`, which each worker process applies."""
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "line": {"format": LOG_FORMAT},
            "access": {"()": "uvicorn.logging.AccessFormatter", "fmt": ACCESS_FORMAT, "use_colors": False},
        },
        "handlers": {"line": {**handler, "formatter": "line"}, "access": {**handler, "formatter": "access"}},
        "loggers": {
            "service": {"handlers": ["line"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["line"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
