"""``python -m etl_assets.cli``: the `etl-assets` command."""

from etl_assets.cli import main

raise SystemExit(main())
