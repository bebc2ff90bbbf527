"""The live web dashboard (``speckleflow dashboard``): runs and results read from Tiled."""

from .app import create_app, serve, serve_in_thread

__all__ = ["create_app", "serve", "serve_in_thread"]
