SELECT COUNT(*) AS n, COUNT(p.premium) AS k, SUM(l.amount) AS s, AVG(p.premium) AS a
FROM bank.loans l FULL OUTER JOIN insurer.policies p ON l.customer_id = p.customer_id
