"""Entry point: ``python -m ak_dispatcher``."""

from akcore.service import main

from .service import run

if __name__ == "__main__":
    main("dispatcher", run)
