SELECT WITH DIFFERENTIAL_PRIVACY OPTIONS (epsilon = 1.0, delta = 1e-6)
       COUNT(*) AS n, SUM(l.amount) AS total
FROM bank.loans AS l JOIN insurer.policies AS p ON l.customer_id = p.customer_id
WHERE p.open_claim = 1
