SELECT p.product, COUNT(*) AS n, COUNT(p.premium) AS k, SUM(l.amount) AS s
FROM bank.loans l FULL JOIN insurer.policies p ON l.customer_id = p.customer_id
  AND l.amount > p.premium * 10
GROUP BY p.product
