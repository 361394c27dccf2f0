"""The local REST + WebSocket API that apps on this device talk to.

The server lives in `p2pgate.api.http` (`build_application`) and `p2pgate.api.routes`;
this package imports none of it, so the SDK and CLI, which need only
`p2pgate.api.models`, start without loading the server.
"""
