SELECT p.product, COUNT(*) AS n, COUNT(l.amount) AS k, SUM(l.amount) AS s
FROM bank.loans l RIGHT JOIN insurer.policies p ON l.customer_id = p.customer_id
  AND l.amount > p.premium * 10 AND p.open_claim = 1
WHERE p.premium > 100
GROUP BY p.product
