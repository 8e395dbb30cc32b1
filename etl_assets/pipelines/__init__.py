"""Pipeline specs and what they become: ``spec`` (the YAML models and loader), ``policy`` (partitions, retries,
automation, backfills, pools), ``steps`` (extract, validate, transform, load as plain functions), ``validation``
(the contract's SQL), ``checks`` and ``assets`` (one spec's assets and checks), ``sensors``, and ``factory``, which
assembles every spec's assets, jobs, schedules and sensors (:func:`~etl_assets.pipelines.factory.build_pipelines`)."""
