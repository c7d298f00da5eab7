SELECT SUM(a.monthly_txn_count * p.premium) AS weighted, AVG(a.monthly_txn_count * p.premium) AS mean
FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id
