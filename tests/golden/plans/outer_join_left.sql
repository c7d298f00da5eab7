SELECT c.region, COUNT(*) AS n, COUNT(p.premium) AS k, AVG(p.premium) AS a
FROM bank.customers c LEFT JOIN insurer.policies p ON c.customer_id = p.customer_id
WHERE c.age > 40
GROUP BY c.region
