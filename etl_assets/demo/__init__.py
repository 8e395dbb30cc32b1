"""Demo upstreams for the reference "shop" domain.

Deterministic data generation (:func:`generate_shop_data`) and a loopback REST API
(:class:`DemoApiServer`) with optional auth and fault injection, so pipelines and tests
can run against realistic sources without any external service.
"""

from etl_assets.demo.api_server import DemoApiServer, FaultConfig
from etl_assets.demo.data import DemoManifest, generate_shop_data, load_manifest

__all__ = ["DemoApiServer", "DemoManifest", "FaultConfig", "generate_shop_data", "load_manifest"]
