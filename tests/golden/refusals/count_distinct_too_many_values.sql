SELECT COUNT(DISTINCT income) FROM bank.customers
