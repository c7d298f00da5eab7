SELECT COUNT(DISTINCT branch) FROM bank.customers
