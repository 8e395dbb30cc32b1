"""Deterministic generation of the reference "shop" domain's upstream data.

One call to :func:`generate_shop_data` lays out every upstream the shop pipelines read:

* ``upstream/orders.parquet``: the orders the demo REST API serves;
* ``sources/shop.sqlite``: the operational database holding ``customers``;
* ``landing/shop.products/products.csv``: the product catalogue drop;
* ``landing/shop.fx_rates/fx_rates.json``: currency conversion rates to USD;
* ``landing/shop.inventory/inventory_<YYYY-MM-DD>.ndjson``: one stock snapshot per day;
* ``upstream/manifest.json``: the parameters used, read back by :func:`load_manifest`.

Output is a pure function of ``(orders, days, start, seed)``: the same arguments give
byte-identical files. Orders are generated in bounded chunks so that tens of millions
of rows fit in a small, constant amount of memory.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["DemoManifest", "FX_RATES_TO_USD", "generate_shop_data", "load_manifest"]

FX_RATES_TO_USD: dict[str, float] = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27}
"""Fixed conversion rates written to ``fx_rates.json`` and used to price orders."""

_MANIFEST_VERSION = 1
_CHUNK_ROWS = 1_000_000
_ROW_GROUP_ROWS = 100_000
_SQLITE_BATCH_ROWS = 50_000
_MICROS_PER_SECOND = 1_000_000
_MICROS_PER_DAY = 86_400 * _MICROS_PER_SECOND
_MAX_UPDATE_LAG_MICROS = 48 * 3_600 * _MICROS_PER_SECOND
_CUSTOMER_HISTORY_DAYS = 730
_EPOCH = dt.date(1970, 1, 1)

_CURRENCIES = list(FX_RATES_TO_USD)
_CURRENCY_WEIGHTS = [0.60, 0.25, 0.15]
_STATUSES = ["placed", "shipped", "cancelled"]
_STATUS_WEIGHTS = [0.25, 0.65, 0.10]
_COUNTRIES = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA"]
_COUNTRY_WEIGHTS = [0.30, 0.14, 0.10, 0.12, 0.08, 0.08, 0.10, 0.08]
_FIRST_NAMES = [
    "Ada",
    "Alan",
    "Amara",
    "Bruno",
    "Chen",
    "Dana",
    "Elena",
    "Farah",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kenji",
    "Lena",
    "Mateo",
    "Nadia",
    "Omar",
    "Priya",
    "Rosa",
    "Sven",
]
_LAST_NAMES = [
    "Almeida",
    "Becker",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Hughes",
    "Ito",
    "Jones",
    "Kowalski",
    "Lopez",
    "Martin",
    "Novak",
    "Okafor",
    "Patel",
    "Rossi",
    "Silva",
    "Tanaka",
    "Walker",
]
_CATEGORY_NOUNS: dict[str, list[str]] = {
    "books": ["Novel", "Cookbook", "Atlas", "Notebook", "Journal"],
    "electronics": ["Headphones", "Charger", "Speaker", "Keyboard", "Webcam"],
    "garden": ["Trowel", "Planter", "Hose", "Pruner", "Seed Kit"],
    "home": ["Lamp", "Mug", "Blanket", "Vase", "Clock"],
    "sports": ["Yoga Mat", "Water Bottle", "Jump Rope", "Dumbbell", "Backpack"],
    "toys": ["Puzzle", "Kite", "Robot", "Board Game", "Plush Bear"],
}
_ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Essential", "Premium", "Smart", "Sturdy"]
_PRICE_ENDINGS_CENTS = np.array([0, 50, 99], dtype=np.int64)

_ORDERS_SCHEMA = pa.schema(
    [
        pa.field("order_id", pa.int64(), nullable=False),
        pa.field("customer_id", pa.int64(), nullable=False),
        pa.field("product_id", pa.int64(), nullable=False),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("unit_price", pa.decimal128(12, 2), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("ordered_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True)
class DemoManifest:
    """Describes one generated shop dataset and where its files live.

    Attributes:
        data_dir: Root directory of the generated data.
        start: First day covered by orders and inventory snapshots.
        days: Number of consecutive days covered.
        orders: Number of orders (order ids are ``1..orders``).
        customers: Number of customers (customer ids are ``1..customers``).
        products: Number of products (product ids are ``1..products``).
        seed: Seed the data was generated from.
        orders_path: Parquet file served by the demo API.
        sqlite_path: SQLite database holding the ``customers`` table.
        landing_dir: Directory holding the ``shop.products``, ``shop.fx_rates`` and ``shop.inventory`` drops (a
            pipeline's landing folder is its reference, ``<domain>.<name>``).
    """

    data_dir: Path
    start: dt.date
    days: int
    orders: int
    customers: int
    products: int
    seed: int
    orders_path: Path
    sqlite_path: Path
    landing_dir: Path

    @property
    def partition_keys(self) -> list[str]:
        """Daily partition keys (``YYYY-MM-DD``) covered by the data, oldest first."""
        return [(self.start + dt.timedelta(days=i)).isoformat() for i in range(self.days)]


def _manifest(
    data_dir: Path, start: dt.date, days: int, orders: int, customers: int, products: int, seed: int
) -> DemoManifest:
    return DemoManifest(
        data_dir=data_dir,
        start=start,
        days=days,
        orders=orders,
        customers=customers,
        products=products,
        seed=seed,
        orders_path=data_dir / "upstream" / "orders.parquet",
        sqlite_path=data_dir / "sources" / "shop.sqlite",
        landing_dir=data_dir / "landing",
    )


def _manifest_path(data_dir: Path) -> Path:
    return data_dir / "upstream" / "manifest.json"


def load_manifest(data_dir: str | Path) -> DemoManifest:
    """Reads the manifest written by :func:`generate_shop_data`.

    Args:
        data_dir: Directory previously passed to :func:`generate_shop_data`. Paths in the
            returned manifest are resolved against it, so the directory may have moved.

    Returns:
        The manifest describing the generated data.

    Raises:
        FileNotFoundError: If no demo data has been generated in ``data_dir``.
        ValueError: If the manifest was written by an incompatible version.
    """
    data_dir = Path(data_dir)
    raw = json.loads(_manifest_path(data_dir).read_text(encoding="utf-8"))
    if raw.get("version") != _MANIFEST_VERSION:
        raise ValueError(
            f"unsupported demo manifest version {raw.get('version')!r} in {data_dir}; regenerate the demo data"
        )
    return _manifest(
        data_dir,
        start=dt.date.fromisoformat(raw["start"]),
        days=int(raw["days"]),
        orders=int(raw["orders"]),
        customers=int(raw["customers"]),
        products=int(raw["products"]),
        seed=int(raw["seed"]),
    )


def generate_shop_data(
    data_dir: str | Path,
    orders: int = 5000,
    days: int = 7,
    start: dt.date = dt.date(2024, 1, 1),
    seed: int = 42,
) -> DemoManifest:
    """Generates the shop domain's upstream files, replacing any previous demo output.

    Each file is written under a temporary name and atomically renamed into place, and
    the manifest is written last, so readers never observe a half-written file.

    Args:
        data_dir: Root directory; created if missing.
        orders: Number of orders to generate.
        days: Number of days the orders and inventory snapshots span.
        start: First day of the span (orders are placed in ``[start, start + days)`` UTC).
        seed: Seed for the pseudo-random generators.

    Returns:
        The manifest describing the generated data.

    Raises:
        ValueError: If ``orders``, ``days`` or ``seed`` is out of range.
    """
    if orders < 1:
        raise ValueError(f"orders must be >= 1, got {orders}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    data_dir = Path(data_dir)
    manifest = _manifest(
        data_dir,
        start=start,
        days=days,
        orders=orders,
        customers=max(50, orders // 20),
        products=max(20, min(10_000, orders // 100)),
        seed=seed,
    )
    manifest_path = _manifest_path(data_dir)
    for directory in (manifest_path.parent, manifest.sqlite_path.parent, manifest.landing_dir):
        directory.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)

    customers_rng, products_rng, orders_rng, inventory_rng = (
        np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(4)
    )
    list_price_cents = _write_products(manifest, products_rng)
    _write_fx_rates(manifest)
    _write_inventory(manifest, inventory_rng)
    _write_customers(manifest, customers_rng)
    _write_orders(manifest, orders_rng, list_price_cents)

    with _atomic_path(manifest_path) as tmp:
        payload = {
            "version": _MANIFEST_VERSION,
            "start": start.isoformat(),
            "days": days,
            "orders": orders,
            "customers": manifest.customers,
            "products": manifest.products,
            "seed": seed,
        }
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return manifest


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yields a sibling temporary path that replaces ``path`` once the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _day_micros(day: dt.date) -> int:
    return (day - _EPOCH).days * _MICROS_PER_DAY


def _stratified_micros(rng: np.random.Generator, first: int, count: int, total: int, lo: int, hi: int) -> np.ndarray:
    """Timestamps for rows ``first..first+count`` of ``total`` spread uniformly over [lo, hi).

    Row ``i`` falls in the ``i``-th of ``total`` equal slices, so ids ascend with time the
    way auto-increment keys do, while the position inside each slice stays random.
    """
    position = (np.arange(first, first + count, dtype=np.float64) + rng.random(count)) / total
    micros = lo + np.floor(position * (hi - lo)).astype(np.int64)
    return np.minimum(micros, hi - 1)


def _write_products(manifest: DemoManifest, rng: np.random.Generator) -> np.ndarray:
    """Writes ``products.csv`` and returns list prices in USD cents indexed by ``product_id - 1``."""
    n = manifest.products
    categories = list(_CATEGORY_NOUNS)
    category_idx = rng.integers(0, len(categories), n)
    noun_idx = rng.integers(0, 5, n)
    adjective_idx = rng.integers(0, len(_ADJECTIVES), n)
    dollars = np.clip(np.rint(rng.lognormal(mean=3.0, sigma=0.9, size=n)), 1, 999).astype(np.int64)
    cents = dollars * 100 + _PRICE_ENDINGS_CENTS[rng.integers(0, len(_PRICE_ENDINGS_CENTS), n)]

    path = manifest.landing_dir / "shop.products" / "products.csv"
    with _atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["product_id", "sku", "name", "category", "list_price"])
        for i in range(n):
            category = categories[category_idx[i]]
            writer.writerow(
                [
                    i + 1,
                    f"SKU-{i + 1:06d}",
                    f"{_ADJECTIVES[adjective_idx[i]]} {_CATEGORY_NOUNS[category][noun_idx[i]]}",
                    category,
                    f"{cents[i] // 100}.{cents[i] % 100:02d}",
                ]
            )
    return cents


def _write_fx_rates(manifest: DemoManifest) -> None:
    path = manifest.landing_dir / "shop.fx_rates" / "fx_rates.json"
    rates = [{"currency": c, "rate_to_usd": r} for c, r in FX_RATES_TO_USD.items()]
    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rates) + "\n", encoding="utf-8")


def _write_inventory(manifest: DemoManifest, rng: np.random.Generator) -> None:
    """Writes one NDJSON snapshot per day; stock levels follow a per-product random walk."""
    directory = manifest.landing_dir / "shop.inventory"
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {f"inventory_{key}.ndjson" for key in manifest.partition_keys}
    for stale in directory.glob("inventory_*.ndjson"):
        if stale.name not in wanted:
            stale.unlink()

    product_ids = range(1, manifest.products + 1)
    on_hand = rng.integers(0, 500, manifest.products)
    for day_index, key in enumerate(manifest.partition_keys):
        if day_index:
            on_hand = np.maximum(on_hand + rng.integers(-40, 41, manifest.products), 0)
        prefix = f'{{"snapshot_date":"{key}","product_id":'
        lines = [f'{prefix}{pid},"on_hand":{qty}}}\n' for pid, qty in zip(product_ids, on_hand.tolist())]
        with _atomic_path(directory / f"inventory_{key}.ndjson") as tmp:
            tmp.write_text("".join(lines), encoding="utf-8")


def _sqlite_timestamps(micros: np.ndarray) -> list[str]:
    seconds = pa.array(micros // _MICROS_PER_SECOND, type=pa.timestamp("s"))
    return pc.strftime(seconds, format="%Y-%m-%d %H:%M:%S").to_pylist()  # pyright: ignore[reportAttributeAccessIssue]


def _write_customers(manifest: DemoManifest, rng: np.random.Generator) -> None:
    """Builds ``shop.sqlite`` with the ``customers`` table in a temp file, then swaps it in."""
    n = manifest.customers
    span_end = _day_micros(manifest.start) + manifest.days * _MICROS_PER_DAY
    history_start = _day_micros(manifest.start) - _CUSTOMER_HISTORY_DAYS * _MICROS_PER_DAY
    first_names = pa.array(_FIRST_NAMES)
    last_names = pa.array(_LAST_NAMES)
    countries = pa.array(_COUNTRIES)

    with _atomic_path(manifest.sqlite_path) as tmp:
        with contextlib.closing(sqlite3.connect(tmp)) as con:
            # Durability is pointless for a scratch file that is renamed into place only
            # after a successful build; these pragmas make bulk inserts several times faster.
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("PRAGMA synchronous = OFF")
            con.execute(
                "CREATE TABLE customers ("
                " customer_id INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " email TEXT NOT NULL,"
                " country TEXT NOT NULL,"
                " created_at TEXT NOT NULL,"
                " updated_at TEXT NOT NULL)"
            )
            for first in range(0, n, _SQLITE_BATCH_ROWS):
                count = min(_SQLITE_BATCH_ROWS, n - first)
                ids = pa.array(np.arange(first + 1, first + count + 1, dtype=np.int64))
                first_name = first_names.take(pa.array(rng.integers(0, len(_FIRST_NAMES), count)))
                last_name = last_names.take(pa.array(rng.integers(0, len(_LAST_NAMES), count)))
                country = countries.take(pa.array(rng.choice(len(_COUNTRIES), count, p=_COUNTRY_WEIGHTS)))
                created = _stratified_micros(rng, first, count, n, history_start, _day_micros(manifest.start))
                updated = created + np.floor(rng.random(count) * (span_end - created)).astype(np.int64)
                name = pc.binary_join_element_wise(first_name, last_name, " ")  # pyright: ignore[reportAttributeAccessIssue]
                email = pc.binary_join_element_wise(  # pyright: ignore[reportAttributeAccessIssue]
                    pc.utf8_lower(first_name),  # pyright: ignore[reportAttributeAccessIssue]
                    ".",
                    pc.utf8_lower(last_name),  # pyright: ignore[reportAttributeAccessIssue]
                    ".",
                    ids.cast(pa.string()),
                    "@example.com",
                    "",
                )
                con.executemany(
                    "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
                    zip(
                        ids.to_pylist(),
                        name.to_pylist(),
                        email.to_pylist(),
                        country.to_pylist(),
                        _sqlite_timestamps(created),
                        _sqlite_timestamps(updated),
                    ),
                )
            con.commit()


def _decimal_cents(cents: np.ndarray) -> pa.Array:
    """Wraps positive integer cents as ``decimal128(12, 2)`` without a per-row conversion."""
    # decimal128 values are 16-byte little-endian two's-complement integers holding the
    # unscaled value; for non-negative cents the high 8 bytes are zero.
    words = np.zeros((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    return pa.Array.from_buffers(pa.decimal128(12, 2), len(cents), [None, pa.py_buffer(words)])


def _write_orders(manifest: DemoManifest, rng: np.random.Generator, list_price_cents: np.ndarray) -> None:
    """Streams ``orders.parquet`` in chunks of at most ``_CHUNK_ROWS`` rows, sorted by order_id."""
    n = manifest.orders
    lo = _day_micros(manifest.start)
    hi = lo + manifest.days * _MICROS_PER_DAY
    currencies = pa.array(_CURRENCIES)
    statuses = pa.array(_STATUSES)
    usd_per_unit = np.array([FX_RATES_TO_USD[c] for c in _CURRENCIES])

    with _atomic_path(manifest.orders_path) as tmp, pq.ParquetWriter(tmp, _ORDERS_SCHEMA) as writer:
        for first in range(0, n, _CHUNK_ROWS):
            count = min(_CHUNK_ROWS, n - first)
            product_idx = rng.integers(0, manifest.products, count)
            currency_idx = rng.choice(len(_CURRENCIES), count, p=_CURRENCY_WEIGHTS)
            ordered_at = _stratified_micros(rng, first, count, n, lo, hi)
            updated_at = ordered_at + rng.integers(0, _MAX_UPDATE_LAG_MICROS, count, endpoint=True)
            local_cents = np.rint(list_price_cents[product_idx] / usd_per_unit[currency_idx])
            chunk = pa.Table.from_arrays(
                [
                    pa.array(np.arange(first + 1, first + count + 1, dtype=np.int64)),
                    pa.array(rng.integers(1, manifest.customers, count, endpoint=True)),
                    pa.array(product_idx + 1),
                    pa.array(rng.integers(1, 5, count, endpoint=True, dtype=np.int32)),
                    _decimal_cents(local_cents.astype(np.int64)),
                    currencies.take(pa.array(currency_idx)),
                    statuses.take(pa.array(rng.choice(len(_STATUSES), count, p=_STATUS_WEIGHTS))),
                    pa.array(ordered_at, type=pa.timestamp("us", tz="UTC")),
                    pa.array(updated_at, type=pa.timestamp("us", tz="UTC")),
                ],
                schema=_ORDERS_SCHEMA,
            )
            writer.write_table(chunk, row_group_size=_ROW_GROUP_ROWS)
