SELECT COUNT(DISTINCT region) FROM bank.customers
