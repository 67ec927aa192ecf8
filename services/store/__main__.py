"""Entry point: ``python -m ak_store``."""

from akcore.service import main

from .service import run

if __name__ == "__main__":
    main("store", run)
