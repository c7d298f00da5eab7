SELECT region, COUNT(*) FROM bank.customers
