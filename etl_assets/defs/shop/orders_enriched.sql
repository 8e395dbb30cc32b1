-- Left joins: an order whose customer, product or rate is unknown is kept, with NULLs, not dropped.
SELECT
    o.order_id,
    o.ordered_at,
    CAST(o.ordered_at AS DATE) AS order_date,
    o.customer_id,
    c.country,
    o.product_id,
    p.category,
    o.quantity,
    o.unit_price,
    o.currency,
    o.status,
    CAST(o.quantity * o.unit_price AS DECIMAL(18, 2)) AS amount,
    CAST(round(o.quantity * o.unit_price * fx.rate_to_usd, 2) AS DECIMAL(18, 2)) AS amount_usd
FROM orders AS o
LEFT JOIN customers AS c USING (customer_id)
LEFT JOIN products AS p USING (product_id)
LEFT JOIN fx_rates AS fx USING (currency)
