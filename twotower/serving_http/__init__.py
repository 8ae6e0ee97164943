"""An HTTP service over an exported artifact (``twotower-serve ARTIFACT``; needs ``pip install 'twotower[serve]'``).

``live`` holds the served Retriever and swaps in new ones, ``app`` is the FastAPI app, ``cli`` the command.
"""
from twotower.serving_http.cli import main

__all__ = ["main"]
