SELECT SUM(CASE WHEN age > 30 THEN region END) FROM bank.customers
