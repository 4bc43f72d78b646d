"""The ASGI entry point uvicorn loads in each web head (`kvern.api.asgi:app`)."""

from kvern.api.app import create_app

app = create_app()
