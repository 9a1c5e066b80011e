"""``python -m idmanager``: the command line, as the ``idmanager`` script runs it."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="idmanager")
