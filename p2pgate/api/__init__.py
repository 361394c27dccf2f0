"""The local REST + WebSocket API that apps on this device talk to."""

from p2pgate.api.http import Route, build_application
from p2pgate.api.routes import ApiServices, DocumentService, DocumentView, api_routes

__all__ = ["ApiServices", "DocumentService", "DocumentView", "Route", "api_routes",
           "build_application"]
