SELECT p.product, SUM(l.amount) / COUNT(*) AS per_loan, ROUND(100.0 * COUNT(*) / 5, 1) AS pct
FROM bank.loans l JOIN insurer.policies p ON l.customer_id = p.customer_id
GROUP BY p.product HAVING SUM(l.amount) > 1000000 ORDER BY per_loan DESC
