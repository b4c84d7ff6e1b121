"""The API's routes, one router per resource (FastAPI's layout); api.app includes them."""
