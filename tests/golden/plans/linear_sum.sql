SELECT p.product, SUM(a.monthly_txn_amount - p.premium) AS margin
FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id
GROUP BY p.product
