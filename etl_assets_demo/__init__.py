"""Demo upstreams for the reference "shop" domain.

Deterministic data generation (:func:`generate_shop_data`) and a loopback REST API
(:class:`DemoApiServer`) with optional auth and fault injection, so pipelines and tests
can run against realistic sources without any external service.

The package stands outside ``etl_assets``: the code location never imports it; only `etl-assets demo`
(:mod:`etl_assets.cli.demo`), the tests and the benchmarks do.
"""

from etl_assets_demo.api_server import DemoApiServer, FaultConfig
from etl_assets_demo.data import DemoManifest, generate_shop_data, load_manifest

__all__ = ["DemoApiServer", "DemoManifest", "FaultConfig", "generate_shop_data", "load_manifest"]
