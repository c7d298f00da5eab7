SELECT region, COUNT(*) / (SELECT COUNT(*) FROM bank.customers) AS share FROM bank.customers GROUP BY region
