SELECT
    order_date,
    country,
    count(*) AS orders,
    CAST(sum(quantity) AS BIGINT) AS units,
    sum(amount_usd) AS revenue_usd
FROM orders_enriched
WHERE status <> 'cancelled'
GROUP BY order_date, country
ORDER BY order_date, country
