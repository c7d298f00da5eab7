SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6)
       c.branch, COUNT(*) AS n
FROM bank.customers c JOIN insurer.policies p ON c.customer_id = p.customer_id
WHERE p.open_claim = 1
GROUP BY c.branch
