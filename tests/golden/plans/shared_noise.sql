SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6)
       COUNT(*) AS n, SUM(a.monthly_txn_amount) AS s, AVG(a.monthly_txn_amount) AS m,
       AVG(a.monthly_txn_amount + p.premium) AS mp, AVG(p.premium + a.monthly_txn_amount) AS pm
FROM payments.accounts a JOIN insurer.policies p ON a.customer_id = p.customer_id
