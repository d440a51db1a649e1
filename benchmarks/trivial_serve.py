"""What Ray Serve itself costs: a second, trivial Serve app for `muxrec bench serve`.

Deployed beside the product app in the same Serve instance (its own route_prefix), so its latencies
are measured by the same proxy, on the same Ray instance, in the same run:

    GET  {prefix}/one-hop   proxy -> TrivialIngress, returns a constant          (one hop, like /healthz)
    GET  {prefix}/two-hop   proxy -> TrivialIngress -> TrivialConstant handle    (two hops, like /v1/rank)
    POST {prefix}/one-hop, {prefix}/two-hop: the same, with a request body that is received, not parsed

A FastAPI ingress like the gateway, without its middleware, schema or dependencies: the difference
between a product route and its trivial twin is what muxrec adds. Not part of the product.
"""

# No `from __future__ import annotations`: Serve's class-based FastAPI routes read the signatures.
from fastapi import FastAPI, Request
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

PREFIX = "/bench-trivial"
APP_NAME = "bench-trivial"
CONSTANT = {"ok": True}

_api = FastAPI(title="muxrec bench: trivial routes")


@serve.deployment(name="TrivialConstant", ray_actor_options={"num_cpus": 0.05})
class TrivialConstant:
    async def value(self) -> dict:
        return CONSTANT


@serve.deployment(name="TrivialIngress", ray_actor_options={"num_cpus": 0.05})
@serve.ingress(_api)
class TrivialIngress:
    def __init__(self, constant: DeploymentHandle):
        self.constant = constant

    @_api.get("/one-hop")
    async def one_hop(self) -> dict:
        return CONSTANT

    @_api.get("/two-hop")
    async def two_hop(self) -> dict:
        return await self.constant.value.remote()

    @_api.post("/one-hop")
    async def one_hop_body(self, request: Request) -> dict:
        await request.body()
        return CONSTANT

    @_api.post("/two-hop")
    async def two_hop_body(self, request: Request) -> dict:
        await request.body()
        return await self.constant.value.remote()


def trivial_app() -> Application:
    return TrivialIngress.bind(TrivialConstant.bind())


def deploy_trivial(base_url: str) -> str:
    """Run the trivial app on the running Serve instance; return its URL (`base_url` + PREFIX)."""
    serve.run(trivial_app(), name=APP_NAME, route_prefix=PREFIX)
    return base_url.rstrip("/") + PREFIX
