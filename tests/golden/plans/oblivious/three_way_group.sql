SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6)
       c.region, AVG(l.defaulted) AS rate, COUNT(*) AS n
FROM bank.customers AS c
JOIN bank.loans AS l ON c.customer_id = l.customer_id
JOIN payments.accounts AS a ON a.customer_id = c.customer_id
JOIN insurer.policies AS p ON p.customer_id = c.customer_id
WHERE a.monthly_txn_count > 10 AND p.open_claim = 1
GROUP BY c.region
