"""``python -m twotower.serving_http ARTIFACT``: the same as ``twotower-serve``."""
from twotower.serving_http.cli import main

main()
