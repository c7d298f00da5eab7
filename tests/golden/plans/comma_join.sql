SELECT p.product, COUNT(*) AS n
FROM bank.customers c, insurer.policies p
WHERE c.customer_id = p.customer_id AND c.age > 40
GROUP BY p.product
