"""The gunicorn entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from service import create_app

app = create_app()
