SELECT region, COUNT(*) AS n, AVG(income) AS avg_income
FROM bank.customers WHERE age >= 30 GROUP BY region ORDER BY n DESC
