"""The gateway's routes, one router per concern; `gateway.create_app` includes them all."""
