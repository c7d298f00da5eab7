WITH x AS (SELECT region, SUM(income) AS total FROM bank.customers GROUP BY region) SELECT AVG(total) FROM x
