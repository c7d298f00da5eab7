SELECT p.product, COUNT(*) AS n, COUNT(c.age) AS k, AVG(c.income) AS a
FROM bank.customers c FULL JOIN insurer.policies p ON c.customer_id = p.customer_id
GROUP BY p.product
